//! Integration tests of the iscsi crate, one binary: our target and initiator against each
//! other, hostile input on raw sockets, and real peers (libiscsi's tools, tgtd).
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]
#![allow(clippy::print_stderr, reason = "skipped peer tests say so on stderr")]

mod hostile;
mod loopback;
mod peers;
mod scripted;
mod support;
mod tgtd;
