//! The software card: ECM/EMM processing, the newcamd card server, live descrambling.

pub mod newcamd;
