//! `${VAR}` and `${VAR:-default}` in module.yaml string values, as in the shell and Docker
//! Compose.
//!
//! Substitution runs on each string value after YAML parsing and before the value is read as a
//! duration, typename, number or keyword, so a value from the environment can never change the
//! document's structure. The default is used when the variable is unset or empty; it is literal
//! text and may hold balanced braces (`${URL:-http://fns/{function.name}}`). `$${` writes a
//! literal `${`. A `${VAR}` with no value and no default is an error naming the variable.

use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    /// The variables of the module being parsed on this thread. Serde gives a value's
    /// `Deserialize` no context, so they ride here for the duration of one parse.
    static VARS: RefCell<HashMap<String, Option<String>>> = RefCell::new(HashMap::new());
}

/// Holds the environment for one parse on this thread; dropping it forgets the values.
pub(super) struct EnvScope(());

impl EnvScope {
    /// Looks up, with `env`, every variable that `text` references.
    pub(super) fn enter(text: &str, env: &dyn Fn(&str) -> Option<String>) -> EnvScope {
        let vars = referenced_names(text)
            .into_iter()
            .map(|name| {
                let value = env(&name);
                (name, value)
            })
            .collect();
        VARS.with(|cell| *cell.borrow_mut() = vars);
        EnvScope(())
    }
}

impl Drop for EnvScope {
    fn drop(&mut self) {
        VARS.with(|cell| cell.borrow_mut().clear());
    }
}

/// `raw` with its variable references replaced from the current [`EnvScope`].
pub(super) fn substitute(raw: &str) -> Result<String, String> {
    if !raw.contains('$') {
        return Ok(raw.to_owned());
    }
    VARS.with(|cell| {
        let vars = cell.borrow();
        expand(raw, &|name| vars.get(name).cloned().flatten())
    })
}

/// Every `NAME` written as `${NAME` in `text`, each once: the variables a parse may need.
fn referenced_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (at, _) in text.match_indices("${") {
        let name: String = text[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// `raw` with every `${NAME}` / `${NAME:-default}` replaced using `lookup`.
pub(super) fn expand(raw: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(reference) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let (body, after) = split_at_closing_brace(reference).ok_or_else(|| {
            format!("`{raw}` opens `${{` without a closing `}}`; write `${{NAME}}` or `${{NAME:-default}}`")
        })?;
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if !is_variable_name(name) {
            return Err(format!(
                "`${{{body}}}` in `{raw}` is not a variable reference: write `${{NAME}}` or \
                 `${{NAME:-default}}`, NAME being letters, digits and `_` (write `$${{` for a literal `${{`)"
            ));
        }
        // As in the shell: an empty value counts as unset when there is a default.
        let value = lookup(name).filter(|value| !value.is_empty() || default.is_none());
        match (value, default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set and `${{{name}}}` has no default; \
                     set it, or write `${{{name}:-value}}`"
                ))
            }
        }
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits `text` at the `}` closing a reference, skipping balanced `{...}` inside a default.
fn split_at_closing_brace(text: &str) -> Option<(&str, &str)> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some((&text[..i], &text[i + 1..])),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
