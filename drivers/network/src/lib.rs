//! The network.* scheme shared by every NIC driver (skeleton; being written).
