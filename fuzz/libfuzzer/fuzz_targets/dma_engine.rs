#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uiommufd_fuzz::dma_engine::run(data));
