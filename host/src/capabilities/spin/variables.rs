//! A Spin component's variables (its `[component.NAME.variables]`, resolved
//! from the app's `[variables]` at load): through `fermyon:spin/variables@2.0.0`,
//! `spin:variables/variables@3.0.0` (async) and the standard
//! `wasi:config/store@0.2.0-draft-2024-09-27`. The same values a Wharf
//! component gets through `wasi:config/store@0.2.0-rc.1`.

use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{Accessor, HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/spin",
        world: "wharf:spin/variables",
    });
}

use bindings::fermyon::spin::variables as v2;
use bindings::spin::variables::variables as v3;
use bindings::wasi::config::store as config;

/// A component's variables (name to value).
#[derive(Debug, Clone, Default)]
pub struct Variables(pub Arc<BTreeMap<String, String>>);

impl Variables {
    fn lookup(&self, name: &str) -> Result<String, Lookup> {
        if crate::manifest::variables::check_name(name).is_err() {
            return Err(Lookup::InvalidName(format!("{name:?} is not a variable name: lower snake case")));
        }
        self.0.get(name).cloned().ok_or_else(|| Lookup::Undefined(format!("no variable {name:?}")))
    }
}

enum Lookup {
    InvalidName(String),
    Undefined(String),
}

struct HasVariables;

impl HasData for HasVariables {
    type Data<'a> = &'a Variables;
}

/// Adds `fermyon:spin/variables@2.0.0` and `wasi:config/store` at Spin's
/// version to `linker`.
pub fn add_sync_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> &Variables,
) -> wasmtime::Result<()> {
    v2::add_to_linker::<_, HasVariables>(linker, view)?;
    config::add_to_linker::<_, HasVariables>(linker, view)?;
    Ok(())
}

/// Adds `spin:variables/variables@3.0.0` to `linker` (a WASI 0.3 engine's).
pub fn add_async_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> &Variables,
) -> wasmtime::Result<()> {
    v3::add_to_linker::<_, HasVariables>(linker, view)
}

impl v2::Host for &Variables {
    fn get(&mut self, name: String) -> Result<String, v2::Error> {
        self.lookup(&name).map_err(|e| match e {
            Lookup::InvalidName(why) => v2::Error::InvalidName(why),
            Lookup::Undefined(why) => v2::Error::Undefined(why),
        })
    }
}

impl v3::Host for &Variables {}

impl<T> v3::HostWithStore<T> for HasVariables {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, v3::Error> {
        accessor.with(|mut access| access.get().lookup(&name)).map_err(|e| match e {
            Lookup::InvalidName(why) => v3::Error::InvalidName(why),
            Lookup::Undefined(why) => v3::Error::Undefined(why),
        })
    }
}

impl config::Host for &Variables {
    fn get(&mut self, key: String) -> Result<Option<String>, config::Error> {
        Ok(self.0.get(&key).cloned())
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, config::Error> {
        Ok(self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}
