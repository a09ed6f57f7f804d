//! The services' allocator: mimalloc (each binary's `#[global_allocator]`), built to commit
//! arena memory as pages are used (`MI_DEFAULT_ARENA_EAGER_COMMIT=0`, set for the C build in
//! `.cargo/config.toml`). Its default commits each arena as soon as it is reserved, and an
//! idle `ferric up` then held about 18 MiB more. `MIMALLOC_ARENA_EAGER_COMMIT` in the
//! environment still overrides it, as mimalloc documents.

/// mimalloc's `mi_option_arena_eager_commit` (the same number in its v2 and v3 option
/// tables; `libmimalloc-sys` names no constant for it).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// The allocator's arena eager-commit setting: 0 = commit on use (how Ferric builds it),
/// 1 = always eager, 2 = eager where the OS overcommits (mimalloc's default).
pub fn arena_eager_commit() -> std::ffi::c_long {
    #[allow(
        unsafe_code,
        reason = "the allocator's option table is only reachable through its C API"
    )]
    // SAFETY: `mi_option_get` reads one integer from mimalloc's option table; it takes any
    // option number.
    unsafe {
        libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build setting took: a build without it idles at a larger resident set.
    #[test]
    fn test_mimalloc_is_built_to_commit_on_use() {
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_some() {
            return;
        }
        assert_eq!(arena_eager_commit(), 0);
    }
}
