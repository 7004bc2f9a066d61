//! Signed-order verification cost: the full path (ABI-encode the trade data, EIP-712 struct hash
//! and digest, recover the signer, compare) against the physical ceiling, raw libsecp256k1
//! public-key recovery of a precomputed digest, on one core in the same run.

use std::hint::black_box;
use std::time::Instant;

use optio_intents::{Action, DERIVE_TRADE_MODULE, Domain, TradeData, address_of, recover};
use secp256k1::{Message, SecretKey};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Signed orders in the set.
    #[arg(long, default_value_t = 2_000)]
    orders: usize,
}

/// Runs the benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let domain = Domain::derive_compat(false).separator();
    let mut signed = Vec::with_capacity(args.orders);
    for i in 0..args.orders {
        let mut secret = [7u8; 32];
        secret[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        let key = SecretKey::from_secret_bytes(secret)?;
        let owner = address_of(&secp256k1::PublicKey::from_secret_key(&key));
        let data = TradeData {
            asset: [9; 20],
            sub_id: i as u128,
            limit_price: 273 * 10i128.pow(18),
            amount: 10i128.pow(17),
            max_fee: 10u128.pow(20),
            recipient_id: 1001,
            is_bid: i % 2 == 0,
        };
        let action = Action {
            subaccount_id: 1001,
            nonce: i as u64,
            module: DERIVE_TRADE_MODULE,
            data: data.encode(),
            expiry: 1_900_000_000,
            owner,
            signer: owner,
        };
        let digest = action.digest(&domain);
        let bytes = optio_intents::sign(&key, &digest).to_vec();
        signed.push((data, action, digest, bytes));
    }
    let n = signed.len();
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        let mut rounds = 0;
        while start.elapsed().as_secs_f64() < 1.0 {
            f();
            rounds += 1;
        }
        (rounds * n) as f64 / start.elapsed().as_secs_f64()
    };
    let raw = time(&mut || {
        for (_, _, digest, sig) in &signed {
            let recid =
                secp256k1::ecdsa::RecoveryId::try_from(i32::from(sig[64] - 27)).expect("0 or 1");
            let s = secp256k1::ecdsa::RecoverableSignature::from_compact(&sig[..64], recid)
                .expect("valid");
            black_box(s.recover(Message::from_digest(*digest)).ok());
        }
    });
    let full = time(&mut || {
        for (data, action, _, sig) in &signed {
            let a = Action {
                data: data.encode(),
                ..action.clone()
            };
            let ok = recover(&a.digest(&domain), sig).is_ok_and(|who| who == a.signer);
            black_box(ok);
        }
    });
    // What signing a receipt per order would cost (the sequencer seals a group with one
    // signature instead).
    let sequencer = secp256k1::SecretKey::from_secret_bytes([0x5e; 32]).expect("key");
    let sign = time(&mut || {
        for (_, _, digest, _) in &signed {
            black_box(secp256k1::ecdsa::sign(
                Message::from_digest(*digest),
                &sequencer,
            ));
        }
    });
    println!("signed-order verification, one core, {n} distinct keys:");
    println!("{:<52} {:>14} {:>12}", "path", "orders/s", "vs ceiling");
    println!(
        "{:<52} {:>14.0} {:>11.2}x",
        "raw libsecp256k1 recovery (the ceiling)", raw, 1.0
    );
    println!(
        "{:<52} {:>14.0} {:>11.2}x",
        "optio: ABI data + EIP-712 digest + recover + compare",
        full,
        full / raw
    );
    println!(
        "{:<52} {:>14.0} {:>11.2}x   ({:.1} µs vs {:.1} µs per recovery)",
        "receipt signature per order (now one per group)",
        sign,
        sign / raw,
        1e6 / sign,
        1e6 / raw
    );
    Ok(())
}
