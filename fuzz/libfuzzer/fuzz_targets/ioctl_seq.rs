#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uiommufd_fuzz::ioctl_seq::run(data));
