//! `meshguard-test-rls --listen 127.0.0.1:PORT --redis redis://127.0.0.1:PORT --limit N --unit minute`
//!
//! Every descriptor gets a limit of N hits per unit, counted in Redis in fixed windows:
//! `INCRBY <domain>_<key>_<value>..._<window start> <hits>` with an expiry of one unit, over the
//! limit once the count exceeds N (envoyproxy/ratelimit's fixed-window algorithm).

use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use tonic::{Request, Response, Status};

struct Limiter {
    redis: redis::aio::MultiplexedConnection,
    limit: u64,
    unit: Unit,
    unit_seconds: u64,
}

#[tonic::async_trait]
impl RateLimitService for Limiter {
    async fn should_rate_limit(&self, request: Request<RateLimitRequest>) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        let hits = u64::from(request.hits_addend.max(1));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| Status::internal(e.to_string()))?.as_secs();
        let window_start = now - now % self.unit_seconds;
        let mut overall = Code::Ok;
        let mut statuses = Vec::new();
        for descriptor in &request.descriptors {
            let mut key = request.domain.clone();
            for entry in &descriptor.entries {
                key.push('_');
                key.push_str(&entry.key);
                key.push('_');
                key.push_str(&entry.value);
            }
            key.push_str(&format!("_{window_start}"));
            let mut redis = self.redis.clone();
            let count: u64 = redis::cmd("INCRBY")
                .arg(&key)
                .arg(hits)
                .query_async(&mut redis)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            if count == hits {
                let _: () = redis::cmd("EXPIRE")
                    .arg(&key)
                    .arg(self.unit_seconds)
                    .query_async(&mut redis)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
            }
            let over = count > self.limit;
            if over {
                overall = Code::OverLimit;
            }
            statuses.push(DescriptorStatus {
                code: if over { Code::OverLimit } else { Code::Ok } as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: u32::try_from(self.limit).unwrap_or(u32::MAX),
                    unit: self.unit as i32,
                }),
                limit_remaining: u32::try_from(self.limit.saturating_sub(count)).unwrap_or(u32::MAX),
                duration_until_reset: Some(Duration {
                    seconds: i64::try_from(window_start + self.unit_seconds - now).unwrap_or(0),
                    nanos: 0,
                }),
                quota: None,
            });
        }
        Ok(Response::new(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        }))
    }
}

fn argument(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let listen = argument(&args, "--listen").ok_or("--listen ADDR is required")?.parse()?;
    let redis_url = argument(&args, "--redis").ok_or("--redis URL is required")?;
    let limit: u64 = argument(&args, "--limit").ok_or("--limit N is required")?.parse()?;
    let (unit, unit_seconds) = match argument(&args, "--unit").as_deref().unwrap_or("minute") {
        "second" => (Unit::Second, 1),
        "minute" => (Unit::Minute, 60),
        "hour" => (Unit::Hour, 3_600),
        other => return Err(format!("unknown unit {other}").into()),
    };
    let redis = redis::Client::open(redis_url)?.get_multiplexed_tokio_connection().await?;
    let limiter = Limiter { redis, limit, unit, unit_seconds };
    println!("listening on {listen}");
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(limiter))
        .serve_with_shutdown(listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
