//! The one fact the image store needs from an ELF file: whether it names a program interpreter.
//!
//! A binary with a `PT_INTERP` program header is dynamically linked and cannot run in an image
//! that ships no libraries, so this is read by hand from the ELF and program headers rather than
//! through a full ELF crate.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Program header type of the entry naming the dynamic loader.
const PT_INTERP: u32 = 3;
/// `e_phnum` value meaning "the real count is elsewhere"; no static busybox needs it.
const PN_XNUM: u16 = 0xffff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("unknown ELF class {0}")]
    Class(u8),
    #[error("unknown ELF byte order {0}")]
    ByteOrder(u8),
    #[error("ELF header is cut short")]
    Truncated,
    #[error("ELF program header table lies outside the file")]
    ProgramHeaders,
    #[error("ELF program interpreter entry lies outside the file")]
    Interpreter,
}

/// The program interpreter an ELF file asks for (`/lib64/ld-linux-x86-64.so.2`), or `None` for a
/// statically linked one.
pub fn interpreter(bytes: &[u8]) -> Result<Option<PathBuf>, ElfError> {
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::NotElf);
    }
    let reader = Reader::new(bytes)?;
    // Offsets of e_phoff, e_phentsize and e_phnum differ between the 32- and 64-bit headers.
    let (phoff, phentsize, phnum) = if reader.wide {
        (reader.u64(0x20)?, reader.u16(0x36)?, reader.u16(0x38)?)
    } else {
        (
            u64::from(reader.u32(0x1c)?),
            reader.u16(0x2a)?,
            reader.u16(0x2c)?,
        )
    };
    if phnum == 0 {
        return Ok(None);
    }
    let min_entry = if reader.wide { 0x38 } else { 0x20 };
    if phnum == PN_XNUM || usize::from(phentsize) < min_entry {
        return Err(ElfError::ProgramHeaders);
    }
    let table_end = u64::from(phnum)
        .checked_mul(u64::from(phentsize))
        .and_then(|size| size.checked_add(phoff))
        .ok_or(ElfError::ProgramHeaders)?;
    if table_end > bytes.len() as u64 {
        return Err(ElfError::ProgramHeaders);
    }
    for index in 0..u64::from(phnum) {
        // In range: the whole table was checked to lie inside `bytes` above.
        let entry = (phoff + index * u64::from(phentsize)) as usize;
        if reader.u32(entry)? != PT_INTERP {
            continue;
        }
        let (offset, size) = if reader.wide {
            (reader.u64(entry + 0x08)?, reader.u64(entry + 0x20)?)
        } else {
            (
                u64::from(reader.u32(entry + 0x04)?),
                u64::from(reader.u32(entry + 0x10)?),
            )
        };
        let path = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(offset, size)| bytes.get(offset..offset.checked_add(size)?))
            .ok_or(ElfError::Interpreter)?;
        let path = path.split(|&b| b == 0).next().unwrap_or_default();
        return Ok(Some(PathBuf::from(OsStr::from_bytes(path))));
    }
    Ok(None)
}

/// Reads fixed-width fields in the file's own class and byte order.
struct Reader<'a> {
    bytes: &'a [u8],
    wide: bool,
    little: bool,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let class = *bytes.get(4).ok_or(ElfError::Truncated)?;
        let order = *bytes.get(5).ok_or(ElfError::Truncated)?;
        let wide = match class {
            1 => false,
            2 => true,
            other => return Err(ElfError::Class(other)),
        };
        let little = match order {
            1 => true,
            2 => false,
            other => return Err(ElfError::ByteOrder(other)),
        };
        Ok(Self {
            bytes,
            wide,
            little,
        })
    }

    fn field<const N: usize>(&self, at: usize) -> Result<[u8; N], ElfError> {
        at.checked_add(N)
            .and_then(|end| self.bytes.get(at..end))
            .and_then(|slice| slice.try_into().ok())
            .ok_or(ElfError::Truncated)
    }

    fn u16(&self, at: usize) -> Result<u16, ElfError> {
        let raw = self.field(at)?;
        Ok(if self.little {
            u16::from_le_bytes(raw)
        } else {
            u16::from_be_bytes(raw)
        })
    }

    fn u32(&self, at: usize) -> Result<u32, ElfError> {
        let raw = self.field(at)?;
        Ok(if self.little {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        })
    }

    fn u64(&self, at: usize) -> Result<u64, ElfError> {
        let raw = self.field(at)?;
        Ok(if self.little {
            u64::from_le_bytes(raw)
        } else {
            u64::from_be_bytes(raw)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LOADER: &[u8] = b"/lib64/ld-linux-x86-64.so.2\0";

    /// A 64-bit little-endian ELF with one PT_LOAD and, when asked, a PT_INTERP naming [`LOADER`].
    fn elf64(with_interp: bool) -> Vec<u8> {
        let phnum: u16 = if with_interp { 2 } else { 1 };
        let mut bytes = vec![0u8; 0x40];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[6] = 1;
        bytes[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        let strings_at = 0x40 + 0x38 * u64::from(phnum);
        let mut load = vec![0u8; 0x38];
        load[..4].copy_from_slice(&1u32.to_le_bytes());
        bytes.extend(load);
        if with_interp {
            let mut interp = vec![0u8; 0x38];
            interp[..4].copy_from_slice(&PT_INTERP.to_le_bytes());
            interp[0x08..0x10].copy_from_slice(&strings_at.to_le_bytes());
            interp[0x20..0x28].copy_from_slice(&(LOADER.len() as u64).to_le_bytes());
            bytes.extend(interp);
            bytes.extend_from_slice(LOADER);
        }
        bytes
    }

    /// A 32-bit big-endian ELF with a single PT_INTERP, to cover the other class and byte order.
    fn elf32_be_dynamic() -> Vec<u8> {
        let mut bytes = vec![0u8; 0x34];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 1;
        bytes[5] = 2;
        bytes[0x1c..0x20].copy_from_slice(&0x34u32.to_be_bytes());
        bytes[0x2a..0x2c].copy_from_slice(&0x20u16.to_be_bytes());
        bytes[0x2c..0x2e].copy_from_slice(&1u16.to_be_bytes());
        let mut interp = vec![0u8; 0x20];
        interp[..4].copy_from_slice(&PT_INTERP.to_be_bytes());
        interp[0x04..0x08].copy_from_slice(&0x54u32.to_be_bytes());
        interp[0x10..0x14].copy_from_slice(&(LOADER.len() as u32).to_be_bytes());
        bytes.extend(interp);
        bytes.extend_from_slice(LOADER);
        bytes
    }

    #[test]
    fn crafted_static_header_has_no_interpreter() {
        assert_eq!(interpreter(&elf64(false)), Ok(None));
    }

    #[test]
    fn crafted_dynamic_header_names_its_loader() {
        let expected = Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(interpreter(&elf64(true)), Ok(expected.clone()));
        assert_eq!(interpreter(&elf32_be_dynamic()), Ok(expected));
    }

    #[test]
    fn rejects_what_is_not_a_whole_elf() {
        assert_eq!(interpreter(b"#!/bin/sh\n"), Err(ElfError::NotElf));
        assert_eq!(interpreter(b"\x7fELF"), Err(ElfError::Truncated));
        assert_eq!(interpreter(b"\x7fELF\x03\x01"), Err(ElfError::Class(3)));
        let mut cut = elf64(true);
        cut.truncate(0x40 + 0x38);
        assert_eq!(interpreter(&cut), Err(ElfError::ProgramHeaders));
        let mut dangling = elf64(true);
        dangling.truncate(dangling.len() - LOADER.len());
        assert_eq!(interpreter(&dangling), Err(ElfError::Interpreter));
    }

    /// The binary the built-in image copies; CI must install busybox-static for this to pass.
    #[test]
    fn host_busybox_is_static() {
        let bytes = std::fs::read("/bin/busybox").expect("busybox-static is installed");
        assert_eq!(interpreter(&bytes), Ok(None));
    }

    #[test]
    fn host_ls_is_dynamic() {
        let bytes = std::fs::read("/bin/ls").expect("coreutils is installed");
        let loader = interpreter(&bytes)
            .unwrap()
            .expect("/bin/ls is dynamically linked");
        assert!(loader.to_string_lossy().contains("ld-"), "{loader:?}");
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = b"\x7fELF".to_vec();
            bytes.extend(tail);
            let _ = interpreter(&bytes);
        }

        #[test]
        fn never_panics_on_corrupted_headers(at in 0usize..0x100, value in any::<u8>()) {
            let mut bytes = elf64(true);
            if let Some(byte) = bytes.get_mut(at) {
                *byte = value;
            }
            let _ = interpreter(&bytes);
        }
    }
}
