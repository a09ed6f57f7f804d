//! TFTP server, HTTP boot server and per-MAC boot config rendering.
