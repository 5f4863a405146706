//! The table's `[[template]]` files, rendered once at start-up: `${VAR}` from the table's
//! variables, then the `--as-service` address rewrites, written atomically to `dest`.

use crate::export::rewrite::Rewriter;
use crate::plan::Template;
use std::collections::BTreeMap;

/// Renders every template; the first failure is printed and ends `up` (exit code 2).
pub fn render_all(
    templates: &[Template],
    vars: &BTreeMap<String, String>,
    rewriter: &Rewriter,
) -> Result<(), i32> {
    for t in templates {
        if let Err(e) = render(t, vars, rewriter) {
            eprintln!("error: template {}: {e}", t.src.display());
            return Err(super::EXIT_CONFIG);
        }
    }
    Ok(())
}

fn render(
    t: &Template,
    vars: &BTreeMap<String, String>,
    rewriter: &Rewriter,
) -> Result<(), String> {
    let src = std::fs::read_to_string(&t.src).map_err(|e| e.to_string())?;
    let out = rewriter.apply(&crate::interp::expand(&src, &|n| vars.get(n).cloned())?);
    // Atomic: a service re-reading its config never sees half a file.
    crate::cache::write_atomic(&t.dest, out.as_bytes())
        .map_err(|e| format!("{}: {e}", t.dest.display()))
}
