//! Trait names, as Ironic and Placement accept them: a custom trait (`CUSTOM_` followed by
//! upper-case letters, digits and underscores) or one of os-traits' standard names
//! (`data/os-traits.txt`, os-traits 3.9.0), at most 255 characters; at most 50 per node.

use std::collections::HashSet;
use std::sync::LazyLock;

/// The most traits a node (or deploy template, or runbook) may carry.
pub const MAX_TRAITS: usize = 50;
/// The longest trait name.
pub const MAX_TRAIT_LEN: usize = 255;

static STANDARD: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("../data/os-traits.txt").lines().collect());

/// Whether `name` is one of os-traits' standard traits.
pub fn is_standard(name: &str) -> bool {
    STANDARD.contains(name)
}

/// Check one trait name; the error says what is wrong, in Ironic's words.
///
/// # Errors
/// A message for a 400.
pub fn check(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_TRAIT_LEN {
        return Err(format!(
            "Invalid trait '{name}': a trait must be between 1 and {MAX_TRAIT_LEN} characters long."
        ));
    }
    if let Some(rest) = name.strip_prefix("CUSTOM_") {
        if !rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Ok(());
        }
        return Err(format!(
            "Invalid trait '{name}': a custom trait must match CUSTOM_[A-Z0-9_]+."
        ));
    }
    if is_standard(name) {
        return Ok(());
    }
    Err(format!(
        "Invalid trait '{name}': it is neither a standard trait nor a custom trait \
         (CUSTOM_[A-Z0-9_]+)."
    ))
}

/// Check a whole list: every name valid, at most [`MAX_TRAITS`], duplicates removed (first
/// occurrence kept).
///
/// # Errors
/// A message for a 400.
pub fn check_all(names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        check(n)?;
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    if out.len() > MAX_TRAITS {
        return Err(format!(
            "Too many traits: {} given, at most {MAX_TRAITS} are allowed.",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_custom_and_standard_traits() {
        assert!(check("CUSTOM_FAKE").is_ok());
        assert!(check("CUSTOM_A_1").is_ok());
        assert!(check("HW_CPU_X86_AVX2").is_ok());
        assert!(check("CUSTOM_").is_err());
        assert!(check("CUSTOM_lower").is_err());
        assert!(check("custom_x").is_err());
        assert!(check("NOT_A_REAL_TRAIT").is_err());
        assert!(check(&format!("CUSTOM_{}", "A".repeat(260))).is_err());
        assert!(check("").is_err());
    }

    #[test]
    fn test_list_rules() {
        let dup = vec!["CUSTOM_A".to_owned(), "CUSTOM_A".to_owned()];
        assert_eq!(check_all(&dup).unwrap(), vec!["CUSTOM_A".to_owned()]);
        let many: Vec<String> = (0..51).map(|i| format!("CUSTOM_T{i}")).collect();
        assert!(check_all(&many).unwrap_err().contains("at most 50"));
        assert_eq!(STANDARD.len(), 377);
    }
}
