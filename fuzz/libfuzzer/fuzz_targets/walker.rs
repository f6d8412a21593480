#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uiommufd_fuzz::walker::run(data));
