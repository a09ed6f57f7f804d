//! Root-device hints (reference §4.8): Ironic's operators over disk properties, and the
//! default choice when no hints are given.
