//! Ferric's `iscsi` deploy interface, both ends of the wire, in userspace.
//!
//! The deploy ramdisk exports its local disk with [`target`]; the conductor logs in with
//! [`initiator`] and writes the image. Neither side may use the kernel's iSCSI stack (the
//! ramdisk is a static musl binary and the conductor has no iSCSI modules), so this crate
//! speaks the RFC 7143 subset those two need itself: login with one-way CHAP (RFC 1994 over
//! MD5), operational negotiation, and the Full Feature Phase at ErrorRecoveryLevel 0 with a
//! single connection per session and one logical unit (LUN 1, as Ironic's iscsi deploy used).
//!
//! [`pdu`] owns the wire format, [`params`] the key negotiation both sides share, [`chap`] the
//! CHAP arithmetic and [`backend`] the block storage the target serves.

pub mod backend;
pub mod chap;
pub mod initiator;
pub mod notify;
pub mod params;
pub mod pdu;
pub mod scsi;
pub mod target;

pub use backend::{BlockBackend, FileBackend};
pub use chap::ChapCredentials;
