//! Spin application variables: the `[variables]` table (a default, or
//! `required`, maybe `secret`), their values (`--variable NAME=VALUE`, then
//! `SPIN_VARIABLE_NAME` in the environment, then the default), and the
//! templates that use them (`"Hello, {{ name }}!"`) in a component's
//! `variables` and `allowed_outbound_hosts`. Everything resolves at load,
//! so a missing required value is a start-up error, not a request's.

use anyhow::{Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;

/// One `[variables]` entry.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVariable {
    #[serde(default)]
    #[allow(dead_code, reason = "part of the format; Wharf has nowhere to show it")]
    description: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    secret: bool,
}

/// The application's variables with their values.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    values: BTreeMap<String, String>,
    secret: Vec<String>,
}

impl Variables {
    /// Resolves `declared` from `given` (the command line's, which win) and
    /// `env` (the process environment's `SPIN_VARIABLE_*`), then defaults.
    pub(super) fn resolve(
        declared: &BTreeMap<String, RawVariable>,
        given: &[(String, String)],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut values = BTreeMap::new();
        let mut secret = Vec::new();
        for (name, variable) in declared {
            check_name(name)?;
            if variable.required && variable.default.is_some() {
                bail!("variables.{name}: a variable is either required or has a default, not both");
            }
            let value = given
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .or_else(|| env(&format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())))
                .or_else(|| variable.default.clone());
            match value {
                Some(value) => {
                    values.insert(name.clone(), value);
                }
                None if variable.required => bail!(
                    "variable {name:?} is required and has no value: pass --variable {name}=VALUE \
                     or set SPIN_VARIABLE_{}",
                    name.to_ascii_uppercase()
                ),
                None => {}
            }
            if variable.secret {
                secret.push(name.clone());
            }
        }
        for (name, _) in given {
            if !declared.contains_key(name) {
                bail!("--variable {name}: the application declares no variable {name:?} in [variables]");
            }
        }
        Ok(Self { values, secret })
    }

    /// Whether `name` is a secret (its value is never logged).
    pub fn is_secret(&self, name: &str) -> bool {
        self.secret.iter().any(|s| s == name)
    }

    /// `template` with every `{{ name }}` replaced by the variable's value.
    pub(super) fn expand(&self, template: &str) -> Result<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let Some((expression, after)) = rest[start + 2..].split_once("}}") else {
                bail!("unmatched '{{{{' in {template:?}");
            };
            let name = expression.trim();
            let Some(value) = self.values.get(name) else {
                if check_name(name).is_err() {
                    bail!("{{{{ {name} }}}} in {template:?} is not a variable name");
                }
                bail!(
                    "{template:?} uses variable {name:?}, which [variables] does not declare or has no value"
                );
            };
            out.push_str(value);
            rest = after;
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Spin's variable names: lower snake case (`api_key`), starting with a
/// letter.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.ends_with('_')
        && !name.contains("__");
    if !ok {
        bail!("{name:?} is not a variable name: lower snake case, like \"api_key\"");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(entries: &[(&str, &str)]) -> BTreeMap<String, RawVariable> {
        entries.iter().map(|(name, toml)| (name.to_string(), toml::from_str(toml).unwrap())).collect()
    }

    #[test]
    fn values_come_from_the_command_line_then_the_environment_then_the_default() {
        let declared = declared(&[
            ("greeting", r#"default = "Hello""#),
            ("name", "required = true"),
            ("token", "required = true\nsecret = true"),
        ]);
        let given = vec![("name".to_string(), "Wharf".to_string())];
        let env = |key: &str| (key == "SPIN_VARIABLE_TOKEN").then(|| "t0k3n".to_string());
        let variables = Variables::resolve(&declared, &given, env).unwrap();
        assert_eq!(variables.expand("{{ greeting }}, {{name}}!").unwrap(), "Hello, Wharf!");
        assert_eq!(variables.expand("{{ token }}").unwrap(), "t0k3n");
        assert!(variables.is_secret("token") && !variables.is_secret("name"));
        assert!(variables.expand("{{ missing }}").is_err());
        assert!(variables.expand("{{ greeting").is_err());

        let missing = Variables::resolve(&declared, &[], |_| None).unwrap_err().to_string();
        assert!(
            missing.contains("--variable name=VALUE") && missing.contains("SPIN_VARIABLE_NAME"),
            "{missing}"
        );
        let given = [given, vec![("nope".to_string(), "x".to_string())]].concat();
        let unknown = Variables::resolve(&declared, &given, env).unwrap_err();
        assert!(unknown.to_string().contains("declares no variable"), "{unknown}");
        assert!(check_name("api_key").is_ok());
        for bad in ["Api", "1x", "a__b", "a-b", "x_"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
