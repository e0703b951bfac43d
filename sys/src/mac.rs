//! MAC addresses of NICs: one syntax, one text form, and random local ones.
//!
//! The rule: a MAC is written as six pairs of hex digits (either case) separated by `:`,
//! such as `02:00:00:00:00:01`; nothing else (no `-`, no single digits, no signs, no
//! spaces). Every MAC ember parses names a NIC, so it must be unicast: the lowest bit of
//! its first byte (the I/G bit) clear. [`format`] writes lower-case pairs. [`random_local`]
//! makes a locally administered (U/L bit set) unicast address.

use crate::random::RandomError;
use thiserror::Error;

/// A MAC address that breaks [the rule](self).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MacError {
    /// Not six pairs of hex digits separated by `:`.
    #[error("{0:?} is not a MAC address: write six pairs of hex digits separated by ':', like 02:00:00:00:00:01")]
    Syntax(String),
    /// A multicast (group) address, which no NIC has.
    #[error("{0:?} is a multicast MAC address, which no NIC can have: the lowest bit of the first byte must be clear, like 02:00:00:00:00:01")]
    Multicast(String),
}

/// Parses a NIC's MAC address written as [the rule](self) says.
pub fn parse(s: &str) -> Result<[u8; 6], MacError> {
    let syntax = || MacError::Syntax(s.to_string());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let p = parts.next().ok_or_else(syntax)?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax());
        }
        *byte = u8::from_str_radix(p, 16).map_err(|_| syntax())?;
    }
    if parts.next().is_some() {
        return Err(syntax());
    }
    if mac[0] & 1 == 1 {
        return Err(MacError::Multicast(s.to_string()));
    }
    Ok(mac)
}

/// `mac` as `aa:bb:cc:dd:ee:ff` (lower-case pairs separated by `:`), which [`parse`] reads
/// back. Any length is written the same way (an interface's hardware address need not be
/// six bytes).
pub fn format(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A random locally administered unicast MAC address (first byte `x2`, `x6`, `xa` or
/// `xe`), from the kernel's CSPRNG.
pub fn random_local() -> Result<[u8; 6], RandomError> {
    let mut mac = [0u8; 6];
    crate::random::fill(&mut mac)?;
    // Clear the I/G bit (unicast), set the U/L bit (locally administered).
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_back() {
        let mac = parse("02:AB:cd:00:0f:ff").unwrap();
        assert_eq!(mac, [0x02, 0xab, 0xcd, 0x00, 0x0f, 0xff]);
        assert_eq!(format(&mac), "02:ab:cd:00:0f:ff");
        assert_eq!(parse(&format(&mac)).unwrap(), mac);
        assert_eq!(format(&[0xab]), "ab");
        assert_eq!(format(&[]), "");
    }

    #[test]
    fn rejects_other_spellings() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02:00:00:00:00:1",
            "02:00:00:00:00:001",
            "2:0:0:0:0:1",
            "02-00-00-00-00-01",
            "02:00:00:00:00:+1",
            "02:00:00:00:00:0g",
            " 02:00:00:00:00:01",
            "02:00:00:00:00:01:",
            "02:00:00:00:00:é",
        ] {
            assert_eq!(parse(bad), Err(MacError::Syntax(bad.into())), "{bad:?}");
        }
    }

    #[test]
    fn rejects_multicast() {
        for bad in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "03:00:00:00:00:00",
        ] {
            assert_eq!(parse(bad), Err(MacError::Multicast(bad.into())), "{bad:?}");
        }
        assert!(MacError::Multicast("x".into())
            .to_string()
            .contains("multicast"));
    }

    #[test]
    fn random_macs_are_local_unicast_and_differ() {
        let macs: Vec<[u8; 6]> = (0..64).map(|_| random_local().unwrap()).collect();
        for m in &macs {
            assert_eq!(m[0] & 0x01, 0, "unicast: {}", format(m));
            assert_eq!(m[0] & 0x02, 0x02, "locally administered: {}", format(m));
            assert_eq!(parse(&format(m)).unwrap(), *m);
        }
        assert!(macs.windows(2).any(|w| w[0] != w[1]));
    }
}
