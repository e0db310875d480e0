//! Everything that touches the local PostgreSQL: observation (one SQL round trip),
//! processes (initdb, pg_ctl, pg_basebackup, pg_rewind), and config files.

pub mod types;
