//! gsinfer: an inference appliance for satellite ground stations.
#![deny(missing_docs)]
