//! State shared by many hosts: the Redis connection that the key-value
//! backend (`capabilities::keyvalue::redis`) and the shared rate limits
//! (`policy::rate_limit`) both use, with a timeout on every call and a
//! health that `/healthz` reports.
//!
//! It uses nothing of the server's; the layers that need Redis use it.

pub mod redis;
