//! virtio-net driver: /scheme/network.<function>_virtio_net (skeleton; being written).

fn main() {}
