//! Shared register memory: a memfd mapped into this process that a program
//! may map too, accessed only atomically. It lives in
//! [`uiommufd_memory::shared`] (IOMMU models use it as well, for register
//! pages a program maps); devices use it through these names.

pub use uiommufd_memory::shared::{register_value, SharedMapping, SharedMemory};
