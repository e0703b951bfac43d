//! Random bytes from the kernel's CSPRNG (`getrandom(2)`, blocking until it is seeded).

use thiserror::Error;

/// The kernel's random source failed.
#[derive(Debug, Error)]
#[error("the kernel's random source failed: getrandom(2): {0} (on Linux older than 3.17 there is no getrandom)")]
pub struct RandomError(#[source] pub std::io::Error);

/// Fills `buf` with random bytes from the kernel's CSPRNG, retrying interrupted and short
/// reads.
pub fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RandomError(e));
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_whole_buffer() {
        // 1 MiB: reads above 256 bytes may come back short, which `fill` must finish.
        let mut big = vec![0u8; 1 << 20];
        fill(&mut big).unwrap();
        // A run of 4096 zero bytes from a CSPRNG would be a broken kernel.
        assert!(big.chunks(4096).all(|c| c.iter().any(|&b| b != 0)));
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        fill(&mut a).unwrap();
        fill(&mut b).unwrap();
        assert_ne!(a, b);
        fill(&mut []).unwrap();
    }
}
