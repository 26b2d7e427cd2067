//! NVML return codes (from nvml-wrapper-sys's bindings) and the simulator's error type.

use nvml_wrapper_sys::bindings as b;

pub type Ret = b::nvmlReturn_t;

pub const SUCCESS: Ret = b::nvmlReturn_enum_NVML_SUCCESS;
pub const UNINITIALIZED: Ret = b::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
pub const INVALID_ARGUMENT: Ret = b::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
pub const NOT_SUPPORTED: Ret = b::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
pub const NOT_FOUND: Ret = b::nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
pub const INSUFFICIENT_SIZE: Ret = b::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
pub const DRIVER_NOT_LOADED: Ret = b::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED;
pub const IN_USE: Ret = b::nvmlReturn_enum_NVML_ERROR_IN_USE;
pub const NO_PERMISSION: Ret = b::nvmlReturn_enum_NVML_ERROR_NO_PERMISSION;
pub const INSUFFICIENT_RESOURCES: Ret = b::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES;
pub const ARGUMENT_VERSION_MISMATCH: Ret = b::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
pub const RESET_REQUIRED: Ret = b::nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED;
pub const UNKNOWN: Ret = b::nvmlReturn_enum_NVML_ERROR_UNKNOWN;

/// NVML's own wording (`nvmlErrorString`), NUL-terminated.
pub fn error_string(r: Ret) -> &'static [u8] {
    match r {
        b::nvmlReturn_enum_NVML_SUCCESS => b"Success\0",
        b::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED => b"Uninitialized\0",
        b::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => b"Invalid Argument\0",
        b::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => b"Not Supported\0",
        b::nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => b"Insufficient Permissions\0",
        b::nvmlReturn_enum_NVML_ERROR_ALREADY_INITIALIZED => b"Already Initialized\0",
        b::nvmlReturn_enum_NVML_ERROR_NOT_FOUND => b"Not Found\0",
        b::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE => b"Insufficient Size\0",
        b::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_POWER => b"Insufficient External Power\0",
        b::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => b"Driver Not Loaded\0",
        b::nvmlReturn_enum_NVML_ERROR_TIMEOUT => b"Timeout\0",
        b::nvmlReturn_enum_NVML_ERROR_IRQ_ISSUE => b"Interrupt Request Issue\0",
        b::nvmlReturn_enum_NVML_ERROR_LIBRARY_NOT_FOUND => b"NVML Shared Library Not Found\0",
        b::nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND => b"Function Not Found\0",
        b::nvmlReturn_enum_NVML_ERROR_CORRUPTED_INFOROM => b"Corrupted infoROM\0",
        b::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => b"GPU is lost\0",
        b::nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED => b"GPU requires restart\0",
        b::nvmlReturn_enum_NVML_ERROR_OPERATING_SYSTEM => {
            b"The operating system has blocked the request.\0"
        }
        b::nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH => {
            b"RM has detected an NVML/RM version mismatch.\0"
        }
        b::nvmlReturn_enum_NVML_ERROR_IN_USE => b"In use by another client\0",
        b::nvmlReturn_enum_NVML_ERROR_MEMORY => b"Insufficient Memory\0",
        b::nvmlReturn_enum_NVML_ERROR_NO_DATA => b"No data\0",
        b::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES => b"Insufficient resources\0",
        b::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH => {
            b"Version mismatch between argument and API\0"
        }
        b::nvmlReturn_enum_NVML_ERROR_DEPRECATED => b"Deprecated\0",
        b::nvmlReturn_enum_NVML_ERROR_NOT_READY => b"Not ready\0",
        b::nvmlReturn_enum_NVML_ERROR_GPU_NOT_FOUND => b"GPU not found\0",
        b::nvmlReturn_enum_NVML_ERROR_INVALID_STATE => b"Invalid state\0",
        _ => b"Unknown Error\0",
    }
}

/// "NVML error 19 (In use by another client)"
pub fn describe(r: Ret) -> String {
    let s = error_string(r);
    format!(
        "NVML error {r} ({})",
        String::from_utf8_lossy(&s[..s.len() - 1])
    )
}

/// What can go wrong in the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A rule of NVML answered this code.
    #[error("{}", describe(*.0))]
    Nvml(Ret),
    /// The state file does not exist: no simulated driver here.
    #[error("no simulated driver state at {0} (run `gpushare-sim init`)")]
    NoState(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Usage(String),
}

impl SimError {
    /// The NVML code an exported function answers for this error.
    pub fn code(&self) -> Ret {
        match self {
            SimError::Nvml(c) => *c,
            SimError::NoState(_) => DRIVER_NOT_LOADED,
            SimError::Io(_) | SimError::Usage(_) => UNKNOWN,
        }
    }

    pub fn io(context: &str, e: impl std::fmt::Display) -> Self {
        SimError::Io(format!("{context}: {e}"))
    }
}

impl From<Ret> for SimError {
    fn from(c: Ret) -> Self {
        SimError::Nvml(c)
    }
}

pub type SimResult<T> = Result<T, SimError>;
