//! `spin2-probe` (tests only): a WASI 0.2 component on Spin's older
//! interfaces, as Spin SDKs 2 and 3 built them: `fermyon:spin/key-value@2.0.0`,
//! `fermyon:spin/variables@2.0.0`, `fermyon:spin/sqlite@2.0.0`. By `op=`:
//! `incr` (key `key=` in store `default`: get, add one, set), `keys`,
//! `var` (variable `name=`), `sql` (create table `t`, insert `name=`, answer
//! the names in order, comma-separated), `denied` (opens store `secret`).

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};

mod spin {
    wit_bindgen::generate!({
        inline: "
            package wharf:spin2-probe;
            world probe {
                import fermyon:spin/key-value@2.0.0;
                import fermyon:spin/variables@2.0.0;
                import fermyon:spin/sqlite@2.0.0;
            }
        ",
        path: "../../wit/spin",
        world: "wharf:spin2-probe/probe",
        generate_all,
    });
}

use spin::fermyon::spin::{key_value, sqlite, variables};

struct Probe;

impl Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let param = |name: &str| wharf_guest::query_param(&request, name).unwrap_or_default();
        let answer: Result<String, String> = match param("op").as_str() {
            "incr" => key_value::Store::open("default").map_err(|e| format!("{e:?}")).and_then(|store| {
                let key = param("key");
                let current = store.get(&key).map_err(|e| format!("{e:?}"))?;
                let count = current.and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok()).unwrap_or(0) + 1;
                store.set(&key, count.to_string().as_bytes()).map_err(|e| format!("{e:?}"))?;
                Ok(count.to_string())
            }),
            "keys" => key_value::Store::open("default")
                .and_then(|store| store.get_keys())
                .map(|mut keys| {
                    keys.sort();
                    keys.join(",")
                })
                .map_err(|e| format!("{e:?}")),
            "var" => variables::get(&param("name")).map_err(|e| format!("{e:?}")),
            "sql" => sqlite::Connection::open("default").map_err(|e| format!("{e:?}")).and_then(|db| {
                let run = |sql: &str, args: &[sqlite::Value]| db.execute(sql, args).map_err(|e| format!("{e:?}"));
                run("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT)", &[])?;
                run("INSERT INTO t (name) VALUES (?)", &[sqlite::Value::Text(param("name"))])?;
                let rows = run("SELECT name FROM t ORDER BY id", &[])?.rows;
                Ok(rows
                    .iter()
                    .filter_map(|r| match r.values.first() {
                        Some(sqlite::Value::Text(t)) => Some(t.clone()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(","))
            }),
            "denied" => key_value::Store::open("secret").map(|_| "opened".to_string()).map_err(|e| format!("{e:?}")),
            other => Err(format!("unknown op {other:?}")),
        };
        match answer {
            Ok(body) => wharf_guest::respond(out, 200, "text/plain", body.as_bytes()),
            Err(error) => wharf_guest::respond(out, 500, "text/plain", error.as_bytes()),
        }
    }
}

wharf_guest::export!(Probe);
