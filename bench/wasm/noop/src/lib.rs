//! Variant (b) of the overhead benchmark: the floor for any Rust proxy-wasm
//! HTTP filter. Envoy creates a VM per worker, a root context and one HTTP
//! context per request. `cargo xtask build` prunes every per-request
//! callback from the exports, as the filter's build prunes those it does
//! not implement, so Envoy enters the VM only to create and delete each
//! request's context. Whatever it costs over native routing is the price of
//! wasm itself.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopRequest))
    }
}

struct NoopRequest;

impl Context for NoopRequest {}

impl HttpContext for NoopRequest {}
