use crate::appliance::Appliance;
use drgw_tls::PeerKind;
use drgw_wire::{self as wire, Hello, Role};

/// Our HELLO: the range of protocol versions this build speaks.
pub fn offer(appliance: &Appliance) -> Hello {
    Hello {
        version_min: wire::PROTOCOL_VERSION_MIN,
        version_max: wire::PROTOCOL_VERSION_MAX,
        role: Role::Appliance,
        appliance_id: *appliance.id.as_bytes(),
        name: appliance.name.clone(),
        software: software(),
    }
}

/// The listener's answer: the chosen version as both ends of the range.
pub fn answer(appliance: &Appliance, version: u16) -> Hello {
    Hello {
        version_min: version,
        version_max: version,
        ..offer(appliance)
    }
}

pub fn software() -> String {
    format!("drgw {}", env!("CARGO_PKG_VERSION"))
}

/// Whether the role a peer claims in HELLO is the kind it was pinned as.
pub fn role_matches(kind: PeerKind, role: Role) -> bool {
    matches!(
        (kind, role),
        (PeerKind::Appliance, Role::Appliance) | (PeerKind::Tap, Role::Tap)
    )
}
