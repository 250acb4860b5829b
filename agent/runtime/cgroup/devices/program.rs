//! The node's `BPF_PROG_TYPE_CGROUP_DEVICE` program, compiled from its allowed devices.
//!
//! The kernel runs it on every device open and mknod by a process in the cgroup, with R1 pointing
//! at `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`, where `access_type`
//! is `access << 16 | device type`. Returning 0 refuses the access with EPERM. The program is a
//! chain of comparisons, one block per rule, so it needs no maps, helpers or loops:
//!
//! ```text
//!         r2 = ctx->access_type; r2 &= 0xffff
//!         if r2 != CHAR goto deny
//!         r3 = ctx->major; r4 = ctx->minor
//! rule:   if r3 != MAJOR goto next; [if r4 != MINOR goto next;] r0 = 1; exit
//! next:   ...
//! deny:   r0 = 0; exit
//! ```

use super::CharDevice;

/// Instruction classes and operations, as `linux/bpf.h` and `linux/bpf_common.h` name them.
const BPF_LDX: u8 = 0x01;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_AND: u8 = 0x50;
const BPF_MOV: u8 = 0xb0;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;

/// `BPF_DEVCG_DEV_CHAR`: the device type of a character device in `access_type`.
const DEV_CHAR: u32 = 1 << 1;
/// Offsets of the fields of `struct bpf_cgroup_dev_ctx`.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;

/// The registers the program uses: the verdict, the context, and the three fields it compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Reg {
    Verdict = 0,
    Ctx = 1,
    DeviceType = 2,
    Major = 3,
    Minor = 4,
}

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(super) struct Insn {
    code: u8,
    /// `dst_reg:4, src_reg:4`, a C bitfield whose nibble order follows the byte order.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Self {
        let (dst, src) = (dst as u8, src as u8);
        let regs = if cfg!(target_endian = "little") {
            dst | src << 4
        } else {
            dst << 4 | src
        };
        Insn {
            code,
            regs,
            off,
            imm,
        }
    }

    /// `dst = *(u32 *)(ctx + offset)`
    const fn load_ctx_u32(dst: Reg, offset: i16) -> Self {
        Insn::new(BPF_LDX | BPF_MEM | BPF_W, dst, Reg::Ctx, offset, 0)
    }

    /// `dst &= mask`
    const fn and(dst: Reg, mask: i32) -> Self {
        Insn::new(BPF_ALU64 | BPF_AND | BPF_K, dst, Reg::Verdict, 0, mask)
    }

    /// `dst = value`
    const fn mov(dst: Reg, value: i32) -> Self {
        Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, dst, Reg::Verdict, 0, value)
    }

    /// `if dst != value goto pc + 1 + skip`
    fn skip_unless(dst: Reg, value: u32, skip: usize) -> Self {
        // Device numbers have at most 20 bits and a program of ours a few dozen instructions, so
        // neither conversion can fail.
        let value = i32::try_from(value).expect("a device number fits in 20 bits");
        let skip = i16::try_from(skip).expect("a device program is a few dozen instructions");
        Insn::new(BPF_JMP | BPF_JNE | BPF_K, dst, Reg::Verdict, skip, value)
    }

    pub(super) const fn exit() -> Self {
        Insn::new(BPF_JMP | BPF_EXIT, Reg::Verdict, Reg::Verdict, 0, 0)
    }
}

/// The program that allows every access to the `allowed` character devices and refuses the rest.
pub(super) fn compile(allowed: &[CharDevice]) -> Vec<Insn> {
    let rules: Vec<Insn> = allowed.iter().flat_map(|device| rule(*device)).collect();
    let mut program = vec![
        Insn::load_ctx_u32(Reg::DeviceType, CTX_ACCESS_TYPE),
        Insn::and(Reg::DeviceType, 0xffff),
    ];
    let loads = [
        Insn::load_ctx_u32(Reg::Major, CTX_MAJOR),
        Insn::load_ctx_u32(Reg::Minor, CTX_MINOR),
    ];
    program.push(Insn::skip_unless(
        Reg::DeviceType,
        DEV_CHAR,
        loads.len() + rules.len(),
    ));
    program.extend(loads);
    program.extend(rules);
    program.extend([Insn::mov(Reg::Verdict, 0), Insn::exit()]);
    program
}

/// One rule's block: it allows and exits on a match, else falls through to the next block.
fn rule(device: CharDevice) -> Vec<Insn> {
    let allow = [Insn::mov(Reg::Verdict, 1), Insn::exit()];
    let mut block = match device.minor {
        Some(minor) => vec![
            Insn::skip_unless(Reg::Major, device.major, 1 + allow.len()),
            Insn::skip_unless(Reg::Minor, minor, allow.len()),
        ],
        None => vec![Insn::skip_unless(Reg::Major, device.major, allow.len())],
    };
    block.extend(allow);
    block
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::runtime::cgroup::devices::ALLOWED;

    /// `BPF_DEVCG_DEV_BLOCK`.
    const DEV_BLOCK: u32 = 1 << 0;
    /// `BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE`.
    const ACC_ALL: u32 = 0b111;

    /// Runs `program` the way the kernel would for one access, for the instructions `compile`
    /// emits (anything else fails the test); returns the verdict register.
    fn run(program: &[Insn], access_type: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access_type, major, minor];
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..program.len() {
            let insn = program[pc];
            let dst = usize::from(insn.regs & 0x0f);
            let src = usize::from(insn.regs >> 4);
            let imm = i64::from(insn.imm) as u64;
            pc += 1;
            match insn.code {
                0x61 => {
                    assert_eq!(src, Reg::Ctx as usize, "loads only read the context");
                    regs[dst] = u64::from(ctx[usize::try_from(insn.off).unwrap() / 4]);
                }
                0x57 => regs[dst] &= imm,
                0xb7 => regs[dst] = imm,
                0x55 if regs[dst] != imm => {
                    pc = pc.checked_add_signed(insn.off.into()).unwrap();
                    assert!(pc < program.len(), "jump out of the program");
                }
                0x55 => {}
                0x95 => return regs[0],
                code => panic!("unexpected opcode {code:#x}"),
            }
        }
        panic!("no exit within {} steps: the program loops", program.len());
    }

    fn allowed(major: u32, minor: u32) -> bool {
        ALLOWED
            .iter()
            .any(|d| d.major == major && d.minor.is_none_or(|m| m == minor))
    }

    #[test]
    fn two_rules_compile_to_the_documented_program() {
        let program = compile(&[CharDevice::one(1, 3), CharDevice::every_minor(136)]);
        let expected = [
            Insn::new(0x61, Reg::DeviceType, Reg::Ctx, 0, 0),
            Insn::new(0x57, Reg::DeviceType, Reg::Verdict, 0, 0xffff),
            Insn::new(0x55, Reg::DeviceType, Reg::Verdict, 9, 2),
            Insn::new(0x61, Reg::Major, Reg::Ctx, 4, 0),
            Insn::new(0x61, Reg::Minor, Reg::Ctx, 8, 0),
            // c 1:3
            Insn::new(0x55, Reg::Major, Reg::Verdict, 3, 1),
            Insn::new(0x55, Reg::Minor, Reg::Verdict, 2, 3),
            Insn::new(0xb7, Reg::Verdict, Reg::Verdict, 0, 1),
            Insn::new(0x95, Reg::Verdict, Reg::Verdict, 0, 0),
            // c 136:*
            Insn::new(0x55, Reg::Major, Reg::Verdict, 2, 136),
            Insn::new(0xb7, Reg::Verdict, Reg::Verdict, 0, 1),
            Insn::new(0x95, Reg::Verdict, Reg::Verdict, 0, 0),
            // deny
            Insn::new(0xb7, Reg::Verdict, Reg::Verdict, 0, 0),
            Insn::new(0x95, Reg::Verdict, Reg::Verdict, 0, 0),
        ];
        assert_eq!(program, expected);
    }

    #[test]
    fn instructions_have_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let insn = Insn::load_ctx_u32(Reg::Minor, CTX_MINOR);
        // SAFETY: Insn is repr(C), 8 bytes without padding, and every byte pattern is a u8.
        let bytes: [u8; 8] = unsafe { std::mem::transmute(insn) };
        let regs = if cfg!(target_endian = "little") {
            0x14
        } else {
            0x41
        };
        let off = 8i16.to_ne_bytes();
        assert_eq!(bytes, [0x61, regs, off[0], off[1], 0, 0, 0, 0]);
    }

    #[test]
    fn every_jump_lands_on_a_rule_or_the_deny_exit() {
        let program = compile(&ALLOWED);
        let deny = program.len() - 2;
        assert_eq!(program[deny..], [Insn::mov(Reg::Verdict, 0), Insn::exit()]);
        for (pc, insn) in program.iter().enumerate() {
            if insn.code != 0x55 {
                continue;
            }
            let target = pc + 1 + usize::try_from(insn.off).unwrap();
            let after_allow =
                program[target - 2..target] == [Insn::mov(Reg::Verdict, 1), Insn::exit()];
            assert!(
                target == deny || after_allow,
                "jump at {pc} lands at {target}, not the start of a rule or deny"
            );
        }
    }

    #[test]
    fn the_node_program_allows_its_dev_and_refuses_the_rest() {
        let program = compile(&ALLOWED);
        let char_access =
            |access: u32, major, minor| run(&program, access << 16 | DEV_CHAR, major, minor);
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)] {
            for access in [1, 2, 4, ACC_ALL] {
                assert_eq!(char_access(access, major, minor), 1, "c {major}:{minor}");
            }
        }
        assert_eq!(char_access(ACC_ALL, 136, 0), 1);
        assert_eq!(char_access(ACC_ALL, 143, 1 << 19), 1);
        for (major, minor) in [
            (1, 1),
            (1, 11),
            (5, 1),
            (4, 0),
            (10, 237),
            (135, 0),
            (144, 0),
        ] {
            assert_eq!(char_access(ACC_ALL, major, minor), 0, "c {major}:{minor}");
        }
        assert_eq!(run(&program, ACC_ALL << 16 | DEV_BLOCK, 1, 3), 0);
        assert_eq!(run(&program, ACC_ALL << 16 | DEV_BLOCK, 7, 0), 0);
    }

    proptest! {
        #[test]
        fn the_node_program_matches_the_rule_list(
            device_type in prop_oneof![Just(DEV_CHAR), Just(DEV_BLOCK), 0u32..0x10000],
            access in 0u32..0x10000,
            major in prop_oneof![0u32..10, 130u32..150, 0u32..4096],
            minor in prop_oneof![0u32..12, 0u32..(1 << 20)],
        ) {
            let verdict = run(&compile(&ALLOWED), access << 16 | device_type, major, minor);
            let expected = device_type == DEV_CHAR && allowed(major, minor);
            prop_assert_eq!(verdict, u64::from(expected));
        }
    }
}
