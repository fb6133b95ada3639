//! Spike for `docs/batched-reports.md`: how fast a shared-queue message from
//! one filter VM wakes another VM, on another Envoy thread, through
//! `on_queue_ready`. Every VM registers a queue at start, lists its name in
//! shared data, and every 50 ms stamps Envoy's clock into every other VM's
//! queue; the receiver logs the difference. A throwaway measurement tool,
//! not product code: it unwraps every host result.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::time::{Duration, UNIX_EPOCH};

const VM_ID: &str = "spike";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { index: None, queue: None, sends: 0 }) });
}}

struct Root {
    index: Option<u64>,
    queue: Option<u32>,
    sends: u64,
}

fn now_ns() -> u128 {
    hostcalls::get_current_time().unwrap().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn append_cas(key: &str, item: &str) -> u64 {
    loop {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap();
        let mut text = value.map(|v| String::from_utf8(v).unwrap()).unwrap_or_default();
        let index = if text.is_empty() { 0 } else { text.split(',').count() as u64 };
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(item);
        if hostcalls::set_shared_data(key, Some(text.as_bytes()), cas).is_ok() {
            return index;
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        let name = format!("q-{}", now_ns());
        let queue = hostcalls::register_shared_queue(&name).unwrap();
        self.queue = Some(queue);
        let index = append_cas("spike/queues", &name);
        self.index = Some(index);
        proxy_wasm::hostcalls::log(LogLevel::Warn, &format!("spike registered {name} index {index}")).unwrap();
        hostcalls::set_tick_period(Duration::from_millis(50)).unwrap();
        true
    }

    fn on_tick(&mut self) {
        let (value, _) = hostcalls::get_shared_data("spike/queues").unwrap();
        let names = value.map(|v| String::from_utf8(v).unwrap()).unwrap_or_default();
        let own = self.index.unwrap_or(u64::MAX) as usize;
        for (index, name) in names.split(',').enumerate() {
            if index == own {
                continue;
            }
            if let Ok(Some(queue)) = hostcalls::resolve_shared_queue(VM_ID, name) {
                let stamp = format!("{} {}", own, now_ns());
                hostcalls::enqueue_shared_queue(queue, Some(stamp.as_bytes())).unwrap();
            }
        }
        self.sends += 1;
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(queue_id) {
            let text = String::from_utf8(bytes).unwrap();
            let (from, sent) = text.split_once(' ').unwrap();
            let sent: u128 = sent.parse().unwrap();
            let latency_us = (now_ns().saturating_sub(sent)) as f64 / 1000.0;
            proxy_wasm::hostcalls::log(
                LogLevel::Warn,
                &format!("spike latency_us {latency_us:.1} from {from} to {:?}", self.index),
            )
            .unwrap();
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Req))
    }
}

struct Req;
impl Context for Req {}
impl HttpContext for Req {}
