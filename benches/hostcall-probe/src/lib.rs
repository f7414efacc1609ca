//! Makes one kind of call into Envoy `repeat` times per request (plugin configuration
//! `"<call> <repeat>"`), so the cost of a call is the CPU difference per request divided by
//! `repeat`. Calls that only make sense at the end of a stream are made in `on_log`.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use std::hint::black_box;

#[derive(Clone, Copy, Default)]
enum Call {
    #[default]
    Nothing,
    Time,
    Header,
    HeaderMap,
    Property,
    ResponseProperty,
    SetProperty,
    SharedGet,
    SharedCas,
    SetHeader,
    /// `set_header`'s header added (`proxy_add_header_map_value`): for a header the request lacks.
    AddHeader,
    RemoveHeader,
    Log,
    /// meshguard's auth path call by call: read :path and the token, remove it, set the claim.
    AuthCalls,
    /// The same with the whole header map read once and written back once.
    AuthMap,
}

#[derive(Clone, Copy, Default)]
struct Probe {
    call: Call,
    repeat: usize,
}

impl Context for Probe {}

impl RootContext for Probe {
    fn on_configure(&mut self, _: usize) -> bool {
        let text = self
            .get_plugin_configuration()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let mut words = text.split_whitespace();
        self.call = match words.next().unwrap_or("nothing") {
            "time" => Call::Time,
            "header" => Call::Header,
            "header_map" => Call::HeaderMap,
            "property" => Call::Property,
            "response_property" => Call::ResponseProperty,
            "set_property" => Call::SetProperty,
            "shared_get" => Call::SharedGet,
            "shared_cas" => Call::SharedCas,
            "set_header" => Call::SetHeader,
            "add_header" => Call::AddHeader,
            "remove_header" => Call::RemoveHeader,
            "log" => Call::Log,
            "auth_calls" => Call::AuthCalls,
            "auth_map" => Call::AuthMap,
            _ => Call::Nothing,
        };
        self.repeat = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let _ = hostcalls::set_shared_data("probe", Some(b"0123456789abcdef0123456789abcdef"), None);
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(*self))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        for i in 0..self.repeat {
            match self.call {
                Call::Time => drop(black_box(hostcalls::get_current_time())),
                Call::Header => drop(black_box(hostcalls::get_map_value(MapType::HttpRequestHeaders, "authorization"))),
                Call::HeaderMap => drop(black_box(hostcalls::get_map(MapType::HttpRequestHeaders))),
                Call::Property => drop(black_box(hostcalls::get_property(vec!["source", "address"]))),
                Call::SetProperty => drop(hostcalls::set_property(vec![if i % 2 == 0 { "probe_a" } else { "probe_b" }], Some(b"{\"decision\":\"allowed\"}"))),
                Call::SharedGet => drop(black_box(hostcalls::get_shared_data("probe"))),
                Call::SharedCas => {
                    if let Ok((Some(value), cas)) = hostcalls::get_shared_data("probe") {
                        let _ = hostcalls::set_shared_data("probe", Some(&value), cas);
                    }
                }
                Call::SetHeader => drop(hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-probe", Some("alice"))),
                Call::AddHeader => drop(hostcalls::add_map_value(MapType::HttpRequestHeaders, "x-probe", "alice")),
                // The first removes the header; later ones find it gone (as a second remove would).
                Call::RemoveHeader => drop(hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", None)),
                Call::AuthCalls => {
                    drop(black_box(hostcalls::get_map_value(MapType::HttpRequestHeaders, ":path")));
                    drop(black_box(hostcalls::get_map_value(MapType::HttpRequestHeaders, "authorization")));
                    drop(hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", None));
                    drop(hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-user", Some("alice")));
                }
                Call::AuthMap => {
                    let mut headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
                    headers.retain(|(name, _)| name != "authorization" && name != "x-user");
                    headers.push(("x-user".to_string(), "alice".to_string()));
                    let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    drop(hostcalls::set_map(MapType::HttpRequestHeaders, pairs));
                }
                _ => {}
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        for _ in 0..self.repeat {
            match self.call {
                Call::ResponseProperty => drop(black_box(hostcalls::get_property(vec!["response", "code"]))),
                Call::Log => drop(hostcalls::log(LogLevel::Info, "{\"time\":\"2026-11-25T12:00:00.000Z\",\"method\":\"GET\",\"path\":\"/api/orders\",\"status\":200,\"rule\":\"api\",\"decision\":\"allowed\"}")),
                _ => {}
            }
        }
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Probe::default()) });
}}
