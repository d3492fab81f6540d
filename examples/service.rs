//! A service on tillit: connect with the identity dir `tillit enroll` wrote, publish and
//! subscribe in the service's own namespace, and keep running while the identity renews itself.
//!
//! ```sh
//! tillit token create --identity DATA/admin --tenant acme --project shop --env prod --service orders > orders.token
//! tillit enroll --token-file orders.token --out ./orders
//! cargo run --example service -- ./orders
//! ```
//!
//! The session renews the certificate and JWT at 2/3 of their life and reconnects with them;
//! the `async_nats::Client` it hands out stays the same, so the application never notices.

use futures::StreamExt;
use std::time::Duration;
use tillit::client::Identity;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tillit::telemetry::init_logging(tillit::telemetry::LogFormat::Text);
    let dir = std::env::args().nth(1).ok_or("usage: service IDENTITY_DIR")?;
    let session = Identity::load(dir)?.connect().await?;
    let me = session.identity();
    let ns = me.service.as_ref().map(|s| s.subject_prefix()).ok_or("not a service identity")?;
    println!("connected as {} (renews at {})", me.id, me.renew_at);

    let client = session.client();
    let mut sub = client.subscribe(format!("{ns}.>")).await?;
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            println!("{} {}", msg.subject, String::from_utf8_lossy(&msg.payload));
        }
    });
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                n += 1;
                client.publish(format!("{ns}.heartbeat"), n.to_string().into()).await?;
            }
        }
    }
    client.flush().await?;
    Ok(())
}
