use crate::appliance::Appliance;
use crate::tls::PeerKind;
use crate::wire::{self, Hello, Role};

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

/// The highest version both ranges share, if any.
pub fn negotiate(theirs: &Hello) -> Option<u16> {
    let low = theirs.version_min.max(wire::PROTOCOL_VERSION_MIN);
    let high = theirs.version_max.min(wire::PROTOCOL_VERSION_MAX);
    (low <= high).then_some(high)
}

/// Whether the role a peer claims in HELLO is the kind it was pinned as.
pub fn role_matches(kind: PeerKind, role: Role) -> bool {
    matches!(
        (kind, role),
        (PeerKind::Appliance, Role::Appliance) | (PeerKind::Tap, Role::Tap)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version_min: u16, version_max: u16) -> Hello {
        Hello {
            version_min,
            version_max,
            role: Role::Appliance,
            appliance_id: [0; 16],
            name: "x".into(),
            software: "y".into(),
        }
    }

    #[test]
    fn picks_highest_common_version() {
        assert_eq!(negotiate(&hello(1, 9)), Some(wire::PROTOCOL_VERSION_MAX));
        assert_eq!(negotiate(&hello(0, 1)), Some(1));
        assert_eq!(negotiate(&hello(wire::PROTOCOL_VERSION_MAX + 1, 99)), None);
    }
}
