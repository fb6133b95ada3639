//! Variant (c) of the overhead benchmark: the floor for any wasm splitter.
//! One SplitMix64 draw and one route-header write per request, 10% canary,
//! fixed: no counting, no latency, no reporting. What the canary filter
//! costs over this is the price of its measurements.
//!
//! Variant (c) sticky is the same module with a header name as its plugin
//! configuration: it reads that header and buckets it with the filter's
//! own sticky hash (`canary_protocol::sticky_bucket`), which is what any
//! sticky splitter pays per request beyond a random one. A request
//! without the header is split at random, as the filter splits it.
//!
//! `cargo xtask build` prunes the module's other per-request callbacks
//! from its exports, as the filter's build does, so that the comparison is
//! of work done, not of exports.

use std::cell::{Cell, RefCell};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

/// Canary share in basis points, as the canary filter counts it.
const CANARY_BP: u64 = 1_000;

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
    /// The sticky key's header, from the plugin configuration (its whole
    /// text); `None`: random. Per VM, which is per thread, rather than in
    /// each request's context: a context with no fields is never allocated.
    static STICKY_HEADER: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// SplitMix64, the generator the canary filter uses, so both variants pay
/// the same for their randomness.
fn splitmix64() -> u64 {
    STATE.with(|state| {
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> { Box::new(SplitRoot) });
}}

struct SplitRoot;

impl Context for SplitRoot {}

impl RootContext for SplitRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let configuration = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten();
        let header = configuration
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map(|text| text.trim().to_owned())
            .filter(|header| !header.is_empty());
        STICKY_HEADER.set(header);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(SplitRequest))
    }
}

struct SplitRequest;

impl Context for SplitRequest {}

impl HttpContext for SplitRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The hostcalls, as the canary filter makes them: the trait helpers
        // would trap the VM on a host error.
        let key = STICKY_HEADER.with_borrow(|header| {
            let header = header.as_deref()?;
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, header).ok().flatten()
        });
        let bucket = match key {
            Some(key) if !key.is_empty() => u64::from(canary_protocol::sticky_bucket(&key)),
            _ => ((splitmix64() >> 32) * 10_000) >> 32,
        };
        let version = if bucket < CANARY_BP { "canary" } else { "stable" };
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-canary-version", Some(version));
        Action::Continue
    }
}
