//! A size in MiB as BOSH gives it (a disk's size, a VM's `ram` and `ephemeral_disk`),
//! bounded where it enters so that its bytes fit the `i64` that a file's length and
//! Docker's memory limit are: a larger number would wrap into a small or negative one.

use serde::{Deserialize, Deserializer};

/// A size in MiB whose bytes fit an `i64` (0 included: `ephemeral_disk: 0` means none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Mib(u64);

/// A number of MiB whose bytes do not fit an `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} MiB is more than the largest size, {max} MiB", max = Mib::MAX.0)]
pub(crate) struct TooLarge(pub(crate) u64);

impl Mib {
    /// The largest size: 8 EiB less 1 MiB, the last whole MiB below `i64::MAX` bytes.
    pub(crate) const MAX: Mib = Mib(i64::MAX.cast_unsigned() >> 20);

    /// `mib` when its bytes fit an `i64`.
    pub(crate) fn new(mib: u64) -> Result<Mib, TooLarge> {
        if mib <= Mib::MAX.0 {
            Ok(Mib(mib))
        } else {
            Err(TooLarge(mib))
        }
    }

    /// The number of MiB.
    pub(crate) fn get(self) -> u64 {
        self.0
    }

    /// The size in bytes, as Docker's `Memory` and a file's length take it.
    pub(crate) fn bytes(self) -> i64 {
        // Cannot overflow: MAX << 20 is below i64::MAX.
        self.0.cast_signed() << 20
    }
}

impl<'de> Deserialize<'de> for Mib {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mib, D::Error> {
        Mib::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_size_fits_an_i64_in_bytes_and_one_more_does_not() {
        assert_eq!(Mib::MAX.get(), 8_796_093_022_207);
        assert_eq!(Mib::MAX.get(), crate::disk_mounts::MAX_IMAGE_MIB);
        assert_eq!(Mib::MAX.bytes(), i64::MAX - ((1 << 20) - 1));
        assert_eq!(Mib::new(512).unwrap().bytes(), 512 << 20);
        assert_eq!(Mib::new(0).unwrap().bytes(), 0);
        assert_eq!(
            Mib::new(Mib::MAX.get() + 1),
            Err(TooLarge(8_796_093_022_208))
        );
        assert_eq!(Mib::new(u64::MAX), Err(TooLarge(u64::MAX)));
        assert_eq!(
            TooLarge(8_796_093_022_208).to_string(),
            "8796093022208 MiB is more than the largest size, 8796093022207 MiB"
        );
    }

    #[test]
    fn it_is_read_as_a_bounded_whole_number() {
        let m: Mib = serde_json::from_value(serde_json::json!(1024)).unwrap();
        assert_eq!(m.get(), 1024);
        let e = serde_json::from_value::<Mib>(serde_json::json!(u64::MAX)).unwrap_err();
        assert!(e.to_string().contains("more than the largest size"), "{e}");
        assert!(serde_json::from_value::<Mib>(serde_json::json!(-1)).is_err());
    }
}
