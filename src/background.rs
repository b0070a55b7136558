//! Background loops: work that runs beside the server on a period and stops when told to.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Runs `pass` every `period` until `stop` turns true; a pass in progress finishes first.
pub fn every<F, Fut>(period: Duration, mut stop: watch::Receiver<bool>, pass: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; start one period in
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                _ = stop.wait_for(|stop| *stop) => true,
            };
            if stopping {
                break;
            }
            pass().await;
        }
    })
}
