//! Root-device hints (reference §4.8): Ironic's operators over disk properties, and the
//! default choice when no hints are given.
//!
//! Semantics follow ironic-lib's `parse_root_device_hints` / `match_root_device_hints` and
//! oslo's `specs_matcher`: string values are lower-cased and URL-quoted on both sides before
//! comparison, a hint without an operator means `s==` for strings and `==` for numbers,
//! `size` is in GiB (the device size is truncated to whole GiB), every hint must match and
//! the first matching device in the given order wins. Without hints the smallest disk of at
//! least 4 GiB is chosen (ties broken by name).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

const GIB: u64 = 1 << 30;
/// Ironic's minimum size for the default root device choice.
pub const DEFAULT_MIN_ROOT_SIZE: u64 = 4 * GIB;

/// One block device as the agent sees it (the fields hints can match on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Device path, e.g. `/dev/sda`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Model string from the device.
    pub model: String,
    /// Vendor string from the device.
    pub vendor: String,
    /// Serial number.
    pub serial: String,
    /// World-wide name, e.g. `0x5000c500a1b2c3d4`.
    pub wwn: String,
    /// WWN including the vendor extension.
    pub wwn_with_extension: String,
    /// The vendor extension of the WWN.
    pub wwn_vendor_extension: String,
    /// Whether the device is rotational (spinning disk).
    pub rotational: bool,
    /// SCSI host:channel:target:lun.
    pub hctl: String,
    /// `/dev/disk/by-path/...` link for the device, if any.
    pub by_path: String,
    /// Transport (sata, sas, nvme, …).
    pub tran: String,
}

/// Why hints could not be parsed or no device could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HintsError {
    /// The hints document is not a JSON object.
    #[error("root device hints must be a JSON object, got: {0}")]
    NotAnObject(String),
    /// A key Ironic does not know.
    #[error("unknown root device hint {0:?}")]
    UnknownKey(String),
    /// A value of the wrong type or with a malformed operator expression.
    #[error("invalid root device hint {key}={value}: {reason}")]
    BadValue {
        /// The hint name.
        key: String,
        /// The offending value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No device satisfies every hint.
    #[error("no suitable device was found for deployment using these hints: {hints}")]
    NoMatch {
        /// The hints, rendered as JSON.
        hints: String,
    },
    /// No hints were given and no disk is at least 4 GiB.
    #[error("no suitable device was found for deployment: no disk of at least {min_bytes} bytes")]
    NoDiskLargeEnough {
        /// The minimum size in bytes.
        min_bytes: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HintType {
    Str,
    Int,
    Bool,
}

fn hint_type(key: &str) -> Option<HintType> {
    Some(match key {
        "size" => HintType::Int,
        "rotational" => HintType::Bool,
        "model"
        | "vendor"
        | "serial"
        | "wwn"
        | "wwn_with_extension"
        | "wwn_vendor_extension"
        | "name"
        | "hctl"
        | "by_path"
        | "tran" => HintType::Str,
        _ => return None,
    })
}

/// Parsed root-device hints: every value is a normalised operator expression
/// (`"s== foo"`, `">= 60"`) or a boolean for `rotational`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RootDeviceHints {
    exprs: BTreeMap<String, String>,
    rotational: Option<bool>,
    original: String,
}

impl fmt::Display for RootDeviceHints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

const STRING_OPS: &[&str] = &["s==", "s!=", "s>=", "s>", "s<=", "s<", "<in>", "<all-in>", "<or>"];
const NUMERIC_OPS: &[&str] = &["==", "!=", ">=", ">", "<=", "<", "=", "<range-in>", "<or>"];

impl RootDeviceHints {
    /// Parse hints from Ironic's JSON object (e.g. `{"size": ">= 60", "rotational": false}`).
    ///
    /// # Errors
    /// Unknown keys, values of the wrong type and malformed operator expressions.
    pub fn parse(value: &serde_json::Value) -> Result<Self, HintsError> {
        let obj = value.as_object().ok_or_else(|| HintsError::NotAnObject(value.to_string()))?;
        let mut hints =
            RootDeviceHints { original: value.to_string(), ..RootDeviceHints::default() };
        for (key, v) in obj {
            let ty = hint_type(key).ok_or_else(|| HintsError::UnknownKey(key.clone()))?;
            let bad = |reason: &str| HintsError::BadValue {
                key: key.clone(),
                value: v.to_string(),
                reason: reason.to_owned(),
            };
            match ty {
                HintType::Bool => {
                    let b = match v {
                        serde_json::Value::Bool(b) => *b,
                        serde_json::Value::String(s) => {
                            parse_bool(s).ok_or_else(|| bad("not a boolean"))?
                        }
                        serde_json::Value::Number(n) => {
                            n.as_i64().map(|n| n != 0).ok_or_else(|| bad("not a boolean"))?
                        }
                        _ => return Err(bad("not a boolean")),
                    };
                    hints.rotational = Some(b);
                }
                HintType::Int => {
                    let expr = match v {
                        serde_json::Value::Number(n) => {
                            let n = n.as_u64().ok_or_else(|| bad("must be a positive integer"))?;
                            if n == 0 {
                                return Err(bad("must be a positive integer"));
                            }
                            format!("== {n}")
                        }
                        serde_json::Value::String(s) => {
                            let s = s.trim();
                            let op = s.split_whitespace().next().unwrap_or_default();
                            if NUMERIC_OPS.contains(&op) {
                                validate_expr(s, true).map_err(|r| bad(&r))?;
                                s.to_owned()
                            } else {
                                let n: u64 = s.parse().map_err(|_| bad("must be an integer"))?;
                                if n == 0 {
                                    return Err(bad("must be a positive integer"));
                                }
                                format!("== {n}")
                            }
                        }
                        _ => return Err(bad("must be an integer")),
                    };
                    hints.exprs.insert(key.clone(), expr);
                }
                HintType::Str => {
                    let s = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        _ => return Err(bad("must be a string")),
                    };
                    let s = s.trim();
                    let first = s.split_whitespace().next().unwrap_or_default();
                    let expr = if STRING_OPS.contains(&first) {
                        let rest = s[first.len()..].trim();
                        if rest.is_empty() {
                            return Err(bad("operator without a value"));
                        }
                        // As ironic-lib: `<or>` alternatives and `<all-in>` words are
                        // quoted one by one; other operators take the whole remainder.
                        let vals: Vec<String> = match first {
                            "<or>" => rest
                                .split("<or>")
                                .map(str::trim)
                                .filter(|v| !v.is_empty())
                                .map(|v| normalize_str(key, v))
                                .collect(),
                            "<all-in>" => {
                                rest.split_whitespace().map(|v| normalize_str(key, v)).collect()
                            }
                            _ => vec![normalize_str(key, rest)],
                        };
                        let sep = if first == "<or>" { " <or> " } else { " " };
                        format!("{first} {}", vals.join(sep))
                    } else {
                        format!("s== {}", normalize_str(key, s))
                    };
                    validate_expr(&expr, false).map_err(|r| bad(&r))?;
                    hints.exprs.insert(key.clone(), expr);
                }
            }
        }
        Ok(hints)
    }

    /// Parse from a JSON string; an empty or `{}` string means "no hints".
    ///
    /// # Errors
    /// As [`RootDeviceHints::parse`], plus malformed JSON.
    pub fn parse_str(s: &str) -> Result<Option<Self>, HintsError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| HintsError::BadValue {
            key: "root_device".into(),
            value: s.to_owned(),
            reason: e.to_string(),
        })?;
        let hints = Self::parse(&v)?;
        Ok(if hints.is_empty() { None } else { Some(hints) })
    }

    /// True when no hint was given.
    pub fn is_empty(&self) -> bool {
        self.exprs.is_empty() && self.rotational.is_none()
    }

    /// Whether `dev` satisfies every hint.
    pub fn matches(&self, dev: &BlockDevice) -> bool {
        if let Some(r) = self.rotational
            && dev.rotational != r
        {
            return false;
        }
        self.exprs.iter().all(|(key, expr)| {
            if key == "size" {
                let gib = (dev.size / GIB).to_string();
                return spec_match(&gib, expr, true);
            }
            let raw = match key.as_str() {
                "model" => &dev.model,
                "vendor" => &dev.vendor,
                "serial" => &dev.serial,
                "wwn" => &dev.wwn,
                "wwn_with_extension" => &dev.wwn_with_extension,
                "wwn_vendor_extension" => &dev.wwn_vendor_extension,
                "name" => &dev.name,
                "hctl" => &dev.hctl,
                "by_path" => &dev.by_path,
                "tran" => &dev.tran,
                _ => return false,
            };
            if raw.is_empty() {
                return false;
            }
            // List-valued attributes (several serials or WWNs, comma-separated) match when
            // any element matches.
            if matches!(
                key.as_str(),
                "serial" | "wwn" | "wwn_with_extension" | "wwn_vendor_extension"
            ) {
                raw.split(',')
                    .filter(|p| !p.trim().is_empty())
                    .any(|part| spec_match(&normalize_str(key, part), expr, false))
            } else {
                spec_match(&normalize_str(key, raw), expr, false)
            }
        })
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
        _ => None,
    }
}

/// Lower-case and URL-quote a string the way ironic-lib does (keeping `/` as is), and
/// give device names their `/dev/` prefix.
fn normalize_str(key: &str, s: &str) -> String {
    let mut s = s.trim().to_lowercase();
    if key == "name" && !s.starts_with("/dev/") {
        s = format!("/dev/{s}");
    }
    if key == "by_path" && !s.starts_with("/dev/disk/by-path/") {
        s = format!("/dev/disk/by-path/{s}");
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn validate_expr(expr: &str, numeric: bool) -> Result<(), String> {
    let words: Vec<&str> = expr.split_whitespace().collect();
    let Some(op) = words.first() else { return Err("empty expression".into()) };
    if *op == "<range-in>" {
        parse_range(&words[1..])?;
        return Ok(());
    }
    if words.len() < 2 {
        return Err(format!("operator {op} needs a value"));
    }
    if numeric && *op != "<or>" && words[1].parse::<f64>().is_err() {
        return Err(format!("{} is not a number", words[1]));
    }
    Ok(())
}

/// `<range-in> [10 100)`: returns (low, low_inclusive, high, high_inclusive).
fn parse_range(words: &[&str]) -> Result<(f64, bool, f64, bool), String> {
    let joined = words.join(" ");
    let t = joined.trim();
    let bad = || format!("malformed range {t:?}, expected e.g. \"[10 100)\"");
    let lo_inc = match t.chars().next() {
        Some('[') => true,
        Some('(') => false,
        _ => return Err(bad()),
    };
    let hi_inc = match t.chars().last() {
        Some(']') => true,
        Some(')') => false,
        _ => return Err(bad()),
    };
    let inner = t.get(1..t.len() - 1).ok_or_else(bad)?;
    let mut parts = inner.split([' ', ',']).filter(|p| !p.is_empty());
    let lo: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let hi: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((lo, lo_inc, hi, hi_inc))
}

/// oslo `specs_matcher.match`: `value` against an operator expression.
fn spec_match(value: &str, expr: &str, numeric: bool) -> bool {
    let words: Vec<&str> = expr.split_whitespace().collect();
    let Some((op, rest)) = words.split_first() else { return false };
    let num = |s: &str| s.parse::<f64>().ok();
    match *op {
        "<or>" => rest.iter().filter(|w| **w != "<or>").any(|w| {
            if numeric { num(w).is_some_and(|w| num(value) == Some(w)) } else { *w == value }
        }),
        "<range-in>" => match (parse_range(rest), num(value)) {
            (Ok((lo, lo_inc, hi, hi_inc)), Some(v)) => {
                (if lo_inc { v >= lo } else { v > lo }) && (if hi_inc { v <= hi } else { v < hi })
            }
            _ => false,
        },
        "<in>" => rest.first().is_some_and(|w| value.contains(w)),
        "<all-in>" => rest.iter().all(|w| value.contains(w)),
        "s==" => rest.first().is_some_and(|w| value == *w),
        "s!=" => rest.first().is_some_and(|w| value != *w),
        "s>=" => rest.first().is_some_and(|w| value >= *w),
        "s>" => rest.first().is_some_and(|w| value > *w),
        "s<=" => rest.first().is_some_and(|w| value <= *w),
        "s<" => rest.first().is_some_and(|w| value < *w),
        op => {
            let (Some(v), Some(w)) = (num(value), rest.first().and_then(|w| num(w))) else {
                return false;
            };
            match op {
                "==" => v == w,
                "!=" => v != w,
                ">=" | "=" => v >= w,
                ">" => v > w,
                "<=" => v <= w,
                "<" => v < w,
                _ => false,
            }
        }
    }
}

/// Choose the root device: the first device (in the given order) matching every hint, or
/// without hints the smallest device of at least 4 GiB.
///
/// # Errors
/// [`HintsError::NoMatch`] naming the hints, or [`HintsError::NoDiskLargeEnough`].
pub fn select_root_device<'a>(
    devices: &'a [BlockDevice],
    hints: Option<&RootDeviceHints>,
) -> Result<&'a BlockDevice, HintsError> {
    match hints {
        Some(h) if !h.is_empty() => devices
            .iter()
            .find(|d| h.matches(d))
            .ok_or_else(|| HintsError::NoMatch { hints: h.original.clone() }),
        _ => {
            let mut sorted: Vec<&BlockDevice> = devices.iter().collect();
            sorted.sort_by(|a, b| a.size.cmp(&b.size).then_with(|| a.name.cmp(&b.name)));
            sorted
                .into_iter()
                .find(|d| d.size >= DEFAULT_MIN_ROOT_SIZE)
                .ok_or(HintsError::NoDiskLargeEnough { min_bytes: DEFAULT_MIN_ROOT_SIZE })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn disks() -> Vec<BlockDevice> {
        vec![
            BlockDevice {
                name: "/dev/sda".into(),
                size: 500 * GIB,
                model: "Samsung SSD 860".into(),
                vendor: "ATA".into(),
                serial: "S3Z1NB0K".into(),
                wwn: "0x5002538e40a1b2c3".into(),
                rotational: false,
                hctl: "0:0:0:0".into(),
                by_path: "/dev/disk/by-path/pci-0000:00:1f.2-ata-1".into(),
                tran: "sata".into(),
                ..Default::default()
            },
            BlockDevice {
                name: "/dev/sdb".into(),
                size: 2000 * GIB,
                model: "WDC WD20EFRX".into(),
                vendor: "WDC".into(),
                serial: "WD-1234".into(),
                wwn: "0x50014ee2b5c6d7e8".into(),
                rotational: true,
                hctl: "1:0:0:0".into(),
                tran: "sas".into(),
                ..Default::default()
            },
            BlockDevice {
                name: "/dev/sdc".into(),
                size: 2 * GIB,
                model: "USB Flash".into(),
                vendor: "Kingston".into(),
                serial: "K1".into(),
                rotational: false,
                ..Default::default()
            },
        ]
    }

    fn pick(h: serde_json::Value) -> Result<String, HintsError> {
        let d = disks();
        let h = RootDeviceHints::parse(&h)?;
        select_root_device(&d, Some(&h)).map(|d| d.name.clone())
    }

    #[test]
    fn test_default_is_smallest_disk_of_at_least_4gib() {
        let d = disks();
        assert_eq!(select_root_device(&d, None).unwrap().name, "/dev/sda");
        let small = vec![d[2].clone()];
        assert!(matches!(
            select_root_device(&small, None),
            Err(HintsError::NoDiskLargeEnough { .. })
        ));
    }

    #[test]
    fn test_every_operator_picks_the_right_disk() {
        let cases = [
            (json!({"size": 2000}), "/dev/sdb"),
            (json!({"size": "== 500"}), "/dev/sda"),
            (json!({"size": "!= 500"}), "/dev/sdb"),
            (json!({"size": ">= 1000"}), "/dev/sdb"),
            (json!({"size": "> 500"}), "/dev/sdb"),
            (json!({"size": "<= 2"}), "/dev/sdc"),
            (json!({"size": "< 100"}), "/dev/sdc"),
            (json!({"size": "= 1000"}), "/dev/sdb"),
            (json!({"size": "<range-in> [400 600)"}), "/dev/sda"),
            (json!({"size": "<range-in> (500 3000]"}), "/dev/sdb"),
            (json!({"size": "<or> 2 <or> 3"}), "/dev/sdc"),
            (json!({"model": "WDC WD20EFRX"}), "/dev/sdb"),
            (json!({"model": "s== usb flash"}), "/dev/sdc"),
            (json!({"vendor": "s!= ata"}), "/dev/sdb"),
            (json!({"vendor": "s>= kingston"}), "/dev/sdb"),
            (json!({"vendor": "s>= kingston", "size": "< 10"}), "/dev/sdc"),
            (json!({"vendor": "s> kingston"}), "/dev/sdb"),
            (json!({"vendor": "s<= ata"}), "/dev/sda"),
            (json!({"vendor": "s< kingston"}), "/dev/sda"),
            (json!({"model": "<in> flash"}), "/dev/sdc"),
            (json!({"model": "<all-in> wdc efrx"}), "/dev/sdb"),
            (json!({"vendor": "<or> kingston <or> samsung"}), "/dev/sdc"),
            (json!({"serial": "WD-1234"}), "/dev/sdb"),
            (json!({"wwn": "0x5002538e40a1b2c3"}), "/dev/sda"),
            (json!({"name": "sdb"}), "/dev/sdb"),
            (json!({"name": "/dev/sdc"}), "/dev/sdc"),
            (json!({"hctl": "1:0:0:0"}), "/dev/sdb"),
            (json!({"by_path": "pci-0000:00:1f.2-ata-1"}), "/dev/sda"),
            (json!({"tran": "sas"}), "/dev/sdb"),
            (json!({"rotational": true}), "/dev/sdb"),
            (json!({"rotational": "false", "size": "< 100"}), "/dev/sdc"),
            (json!({"rotational": false, "vendor": "ata"}), "/dev/sda"),
        ];
        for (h, want) in cases {
            assert_eq!(pick(h.clone()).unwrap(), want, "hints {h}");
        }
    }

    #[test]
    fn test_no_match_names_the_hints() {
        let err = pick(json!({"model": "nonexistent", "size": ">= 10"})).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HintsError::NoMatch { .. }));
        assert!(msg.contains("nonexistent") && msg.contains(">= 10"), "{msg}");
    }

    #[test]
    fn test_bad_hints_are_rejected() {
        assert!(matches!(pick(json!({"colour": "red"})), Err(HintsError::UnknownKey(_))));
        assert!(matches!(pick(json!({"size": "big"})), Err(HintsError::BadValue { .. })));
        assert!(matches!(pick(json!({"size": 0})), Err(HintsError::BadValue { .. })));
        assert!(matches!(pick(json!({"rotational": "maybe"})), Err(HintsError::BadValue { .. })));
        assert!(matches!(
            pick(json!({"size": "<range-in> 10 100"})),
            Err(HintsError::BadValue { .. })
        ));
        assert!(matches!(pick(json!([1])), Err(HintsError::NotAnObject(_))));
        assert_eq!(RootDeviceHints::parse_str("").unwrap(), None);
        assert_eq!(RootDeviceHints::parse_str("{}").unwrap(), None);
    }
}
