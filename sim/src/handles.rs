//! Opaque NVML handles: (kind, GPU index, GPU-instance id, compute-instance id, serial) packed
//! into the pointer value. Never null, never dereferenced; decoded and checked against the
//! state on every call, so a handle to a destroyed instance is refused even after its id has
//! been reused (the serial differs).
//!
//! Bits: 0-3 zero, 4-27 serial (low 24 bits), 28-31 CI id, 32-35 GI id, 36-41 GPU index,
//! 42-44 kind. The largest value stays below 2^45, inside user address space.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A physical GPU (`nvmlDevice_t`).
    Gpu = 1,
    /// A MIG device (`nvmlDevice_t` from nvmlDeviceGetMigDeviceHandleByIndex).
    Mig = 2,
    /// `nvmlGpuInstance_t`
    GpuInstance = 3,
    /// `nvmlComputeInstance_t`
    ComputeInstance = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    pub kind: Kind,
    pub gpu: u32,
    pub gi: u32,
    pub ci: u32,
    /// Low 24 bits of the instance's serial (0 for a GPU).
    pub serial: u32,
}

const SERIAL_MASK: u64 = 0xff_ffff;

/// The part of a serial a handle carries.
pub fn short_serial(serial: u64) -> u32 {
    (serial & SERIAL_MASK) as u32
}

impl Handle {
    pub fn gpu(gpu: u32) -> Self {
        Handle {
            kind: Kind::Gpu,
            gpu,
            gi: 0,
            ci: 0,
            serial: 0,
        }
    }

    pub fn mig(gpu: u32, gi: u32, ci: u32, serial: u64) -> Self {
        Handle {
            kind: Kind::Mig,
            gpu,
            gi,
            ci,
            serial: short_serial(serial),
        }
    }

    pub fn gpu_instance(gpu: u32, gi: u32, serial: u64) -> Self {
        Handle {
            kind: Kind::GpuInstance,
            gpu,
            gi,
            ci: 0,
            serial: short_serial(serial),
        }
    }

    pub fn compute_instance(gpu: u32, gi: u32, ci: u32, serial: u64) -> Self {
        Handle {
            kind: Kind::ComputeInstance,
            gpu,
            gi,
            ci,
            serial: short_serial(serial),
        }
    }

    pub fn encode(self) -> usize {
        let v = ((self.kind as u64) << 42)
            | (u64::from(self.gpu & 0x3f) << 36)
            | (u64::from(self.gi & 0xf) << 32)
            | (u64::from(self.ci & 0xf) << 28)
            | ((u64::from(self.serial) & SERIAL_MASK) << 4);
        v as usize
    }

    pub fn decode(v: usize) -> Option<Self> {
        let v = v as u64;
        if v & 0xf != 0 || v >> 45 != 0 {
            return None;
        }
        let kind = match (v >> 42) & 0x7 {
            1 => Kind::Gpu,
            2 => Kind::Mig,
            3 => Kind::GpuInstance,
            4 => Kind::ComputeInstance,
            _ => return None,
        };
        Some(Handle {
            kind,
            gpu: ((v >> 36) & 0x3f) as u32,
            gi: ((v >> 32) & 0xf) as u32,
            ci: ((v >> 28) & 0xf) as u32,
            serial: ((v >> 4) & SERIAL_MASK) as u32,
        })
    }

    pub fn as_ptr<T>(self) -> *mut T {
        self.encode() as *mut T
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for h in [
            Handle::gpu(0),
            Handle::gpu(31),
            Handle::mig(3, 14, 7, 0x1234_5678),
            Handle::gpu_instance(1, 0, 1),
            Handle::compute_instance(2, 13, 0, 99),
        ] {
            let v = h.encode();
            assert_ne!(v, 0);
            assert_eq!(Handle::decode(v), Some(h));
        }
        assert_eq!(Handle::decode(0), None);
        assert_eq!(Handle::decode(0x7fff_0000_1000), None);
        assert_eq!(Handle::decode(Handle::gpu(0).encode() | 1), None);
    }
}
