//! DHCP, ping and TCP fetch with smoltcp over a /scheme/network handle (skeleton; being written).

fn main() {}
