#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uiommufd_fuzz::vfio_cdev::run(data));
