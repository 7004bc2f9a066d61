//! The blob's words (format version 3): one encoding per batch, refusals with stable errors,
//! and the evaluation the L1 contract computes over them.

use optio_state::blob::{self, BlobError, BlobMeta, HEADER_BYTES, bits, kind};
use optio_state::poseidon::{Fr, to_bytes};
use optio_state::{Op, decode, encode};
use optio_types::{AccountId, Address, Amount, InstrumentId, MarginMode, Price, Qty, Side};

fn meta() -> BlobMeta {
    BlobMeta {
        number: 3,
        first_seq: 10,
        last_seq: 20,
        time_ms: 1_800_000_000_000,
        accounts: 4,
        instruments: 2,
    }
}

fn ops() -> Vec<Op> {
    vec![
        Op::Mark {
            instrument: InstrumentId(1),
            mark: Price(-5),
            index: Price(i64::MAX),
            risk: vec![Amount(-(1 << 46)), Amount(0), Amount((1 << 46) + 3)],
            // All 64 bits of the time (over the two account ids' places in the first word).
            published_ms: u64::MAX - 1,
        },
        Op::Fill {
            instrument: InstrumentId(1),
            maker: AccountId(2),
            taker: AccountId(3),
            taker_side: Side::Buy,
            price: Price(4_200_000_000),
            qty: Qty(50_000_000),
        },
        Op::OpenAccount {
            owner: Address([0xab; 20]),
        },
        Op::Deposit {
            account: AccountId(4),
            amount: Amount(77),
        },
        Op::LiquidationStart {
            account: AccountId(3),
        },
        Op::LiquidationEnd {
            account: AccountId(2),
        },
    ]
}

#[test]
fn ops_come_back_in_the_circuits_order_and_reencode_to_the_same_bytes() {
    let bytes = encode(&meta(), &ops()).expect("encodes");
    let (m, decoded) = decode(&bytes).expect("decodes");
    assert_eq!(m, meta());
    // Op slots first (in the batch's order), marks last.
    assert_eq!(decoded[..5], ops()[1..]);
    assert_eq!(decoded[5], ops()[0]);
    assert_eq!(encode(&m, &decoded).expect("encodes"), bytes);
    // Fill: 1 word; opening: 2; deposit: 2; an auction's start and its end: 1 each (the kind
    // and account, at the documented bits); mark: 2, and its one chunk of eleven values (three
    // given, zero-padded) five to a word.
    assert_eq!(bytes.len(), HEADER_BYTES + 32 * (1 + 2 + 2 + 1 + 1 + 2 + 3));
    for (at, k, account) in [
        (5, kind::LIQUIDATION_START, 3u64),
        (6, kind::LIQUIDATION_END, 2),
    ] {
        let word = &bytes[HEADER_BYTES + 32 * at..HEADER_BYTES + 32 * (at + 1)];
        let expected = Fr::from(k) + Fr::from(account) * blob::pow2(bits::A);
        assert_eq!(word, &optio_state::poseidon::to_bytes(&expected)[..]);
    }
}

#[test]
fn damaged_blobs_are_refused_with_the_reason() {
    let bytes = encode(&meta(), &ops()).expect("encodes");
    let word = |i: usize| HEADER_BYTES + 32 * i;
    // A word at or above the modulus.
    let mut bad = bytes.clone();
    bad[word(0)..word(1)].fill(0xff);
    assert!(matches!(
        decode(&bad),
        Err(BlobError::Invalid { what, .. }) if what.contains("modulus")
    ));
    // A bit set where the fill has no field (above the quantity).
    let mut bad = bytes.clone();
    bad[word(0)] = 0x01;
    assert!(matches!(decode(&bad), Err(BlobError::Invalid { .. })));
    // An unknown kind.
    let mut bad = bytes.clone();
    bad[word(1) - 1] = 99;
    assert_eq!(
        decode(&bad).map(|_| ()),
        Err(BlobError::UnknownOp {
            offset: word(0),
            tag: 99
        })
    );
    // An opening whose id is not the next (the header says 5 accounts before the batch).
    let mut other_count = bytes.clone();
    other_count[40] = 5;
    assert!(matches!(
        decode(&other_count),
        Err(BlobError::Invalid { what, .. }) if what.contains("not canonical")
    ));
    // The mark before the fill: marks come last.
    let encoded = blob::encode_ops(&meta(), &ops()).expect("encodes");
    let mut words: Vec<Fr> = encoded.iter().flat_map(|e| e.words.clone()).collect();
    words.rotate_right(5);
    let mut reordered = bytes[..HEADER_BYTES].to_vec();
    for w in &words {
        reordered.extend_from_slice(&to_bytes(w));
    }
    assert_eq!(
        decode(&reordered).map(|_| ()),
        Err(BlobError::Invalid {
            offset: HEADER_BYTES,
            what: "op order (not the circuit's)"
        })
    );
    // Fewer or more words than the header says.
    assert_eq!(
        decode(&bytes[..bytes.len() - 32]).map(|_| ()),
        Err(BlobError::Truncated(bytes.len() - 32))
    );
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 32]);
    assert_eq!(decode(&longer).map(|_| ()), Err(BlobError::Trailing(32)));
}

#[test]
fn what_the_format_cannot_hold_is_refused_at_encoding() {
    let too_wide = [Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(1),
        index: Price(60_000_000_000),
        risk: vec![Amount(1 << 47)],
        published_ms: 0,
    }];
    assert_eq!(
        encode(&meta(), &too_wide).map(|_| ()),
        Err(BlobError::Unencodable {
            op: 0,
            what: "a risk value outside -2^47..2^47"
        })
    );
    let no_index = [Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(1),
        index: Price(-1),
        risk: Vec::new(),
        published_ms: 0,
    }];
    assert_eq!(
        encode(&meta(), &no_index).map(|_| ()),
        Err(BlobError::Unencodable {
            op: 0,
            what: "an index outside 0..2^63"
        })
    );
    let negative = [Op::Deposit {
        account: AccountId(0),
        amount: Amount(-1),
    }];
    assert!(matches!(
        encode(&meta(), &negative),
        Err(BlobError::Unencodable { op: 0, .. })
    ));
    let orphan = [Op::SettlePosition {
        account: AccountId(0),
        instrument: InstrumentId(0),
        qty: Qty(1),
        cash: Amount(5),
    }];
    assert!(matches!(
        encode(&meta(), &orphan),
        Err(BlobError::Unencodable { op: 0, .. })
    ));
    // A spec the decoder could not read back (the engine's names never make one): a symbol of
    // 18 characters, or one outside A-Z 0-9 _.
    let mut spec = optio_types::InstrumentSpec::with_defaults(
        "BTC-PERPETUAL".parse().expect("a name"),
        Price(1 << 40),
    );
    for (symbol, what) in [
        ("ABCDEFGHIJ_KLMNOPQ", "a spec's length is 65 to 81 bytes"),
        ("btc", "a symbol outside A-Z 0-9 _"),
    ] {
        spec.name.underlying = symbol.to_string();
        let listing = [Op::ListInstrument { spec: spec.clone() }];
        assert_eq!(
            encode(&meta(), &listing).map(|_| ()),
            Err(BlobError::Unencodable { op: 0, what })
        );
    }
}

#[test]
fn the_fill_word_packs_its_fields_at_the_documented_bits() {
    let encoded = blob::encode_ops(&meta(), &ops()[1..2]).expect("encodes");
    let w = encoded[0].words[0];
    let expected = Fr::from(kind::FILL)
        + Fr::from(2u64) * blob::pow2(bits::A)
        + Fr::from(3u64) * blob::pow2(bits::B)
        + Fr::from(1u64) * blob::pow2(bits::INSTRUMENT)
        + blob::pow2(bits::SMALL)
        + Fr::from(4_200_000_000u64) * blob::pow2(bits::PRICE)
        + Fr::from(50_000_000u64) * blob::pow2(bits::QTY);
    assert_eq!(w, expected);
}

#[test]
fn the_evaluation_is_horner_from_one_at_a_point_drawn_from_the_words_and_the_commitment() {
    let encoded = blob::encode_ops(&meta(), &ops()).expect("encodes");
    let words: Vec<Fr> = encoded.iter().flat_map(|e| e.words.clone()).collect();
    let c = blob::commitment(&encoded);
    let (z, y) = blob::binding(c, &words);
    let mut expected = Fr::from(1u64);
    for w in &words {
        expected = expected * z + w;
    }
    assert_eq!(y, expected);
    // Another commitment, another point; a changed word, another value.
    let (z2, _) = blob::binding(c + Fr::from(1u64), &words);
    assert_ne!(z, z2);
    let mut changed = words.clone();
    changed[0] += Fr::from(1u64);
    assert_ne!(blob::evaluate(z, &changed), y);
    // A leading zero word changes the value too (the length is in it).
    let mut longer = vec![Fr::from(0u64)];
    longer.extend_from_slice(&words);
    assert_ne!(blob::evaluate(z, &longer), y);
}

/// The canonical spec bytes (fixed fields first, the symbol last) round-trip for a perpetual,
/// a call, a put and a suffixed symbol; and the decoder refuses exactly what the validity
/// circuit does not admit, each with its reason, so that every proven listing decodes.
#[test]
fn spec_bytes_round_trip_and_refuse_what_the_circuit_does_not_admit() {
    use optio_state::leaf::{spec, spec_bytes, spec_from_bytes};
    use optio_types::{FeeRate, InstrumentSpec};
    for name in [
        "BTC-PERPETUAL",
        "ETH-26MAR27-4000-C",
        "BTC-1JAN30-65000-P",
        "XRP_USDC-31DEC99-2-C",
    ] {
        let mut s = InstrumentSpec::with_defaults(name.parse().expect(name), Price(1 << 40));
        s.maker_fee = FeeRate(-100);
        s.market_protection_bps = 70_000;
        let bytes = spec_bytes(&s);
        assert_eq!(
            bytes.len(),
            spec::SYMBOL + name.split('-').next().expect("a symbol").len()
        );
        assert_eq!(spec_from_bytes(&bytes), Ok(s.clone()), "{name}");
        assert_eq!(
            i32::from_be_bytes(
                bytes[spec::MAKER_FEE..spec::MAKER_FEE + 4]
                    .try_into()
                    .expect("four bytes")
            ),
            -100
        );
    }
    let perp = spec_bytes(&InstrumentSpec::with_defaults(
        "BTC-PERPETUAL".parse().expect("a name"),
        Price(1 << 40),
    ));
    let call = spec_bytes(&InstrumentSpec::with_defaults(
        "ETH-26MAR27-4000-C".parse().expect("a name"),
        Price(1 << 40),
    ));
    let with = |base: &[u8], at: usize, v: u8| {
        let mut b = base.to_vec();
        b[at] = v;
        b
    };
    let long = [perp.clone(), b"ABCDEFGHIJKLMNO".to_vec()].concat();
    let refusals: [(Vec<u8>, &str); 11] = [
        (
            perp[..spec::SYMBOL].to_vec(),
            "a spec's length is 65 to 81 bytes",
        ),
        (long, "a spec's length is 65 to 81 bytes"),
        (
            with(&perp, spec::PAYOFF, 3),
            "a payoff kind other than 0, 1 or 2",
        ),
        (with(&perp, 2, 1), "a perpetual with a date or strike"),
        (
            with(&perp, spec::STRIKE + 7, 1),
            "a perpetual with a date or strike",
        ),
        (
            with(&call, 1, 100),
            "an option's expiry date not on the calendar",
        ),
        (
            with(&call, 2, 13),
            "an option's expiry date not on the calendar",
        ),
        (
            with(&call, 3, 0),
            "an option's expiry date not on the calendar",
        ),
        // 29 February 2027, 31 April 2027.
        (
            with(&with(&call, 2, 2), 3, 29),
            "an option's expiry date not on the calendar",
        ),
        (
            with(&with(&call, 2, 4), 3, 31),
            "an option's expiry date not on the calendar",
        ),
        (
            with(&call, spec::SYMBOL, b'e'),
            "a symbol outside A-Z 0-9 _",
        ),
    ];
    for (bytes, why) in refusals {
        assert_eq!(spec_from_bytes(&bytes), Err(why));
    }
    // 29 February 2028 is on it.
    let leap = with(&with(&with(&call, 1, 28), 2, 2), 3, 29);
    assert!(spec_from_bytes(&leap).is_ok());
}

/// A margin mode is one word, `[28 | account | mode]`, after the session keys and before the
/// expiries; a code past Portfolio's (2) is refused.
#[test]
fn a_margin_mode_is_one_word_after_the_session_keys() {
    let ops = [
        Op::SetMarginMode {
            account: AccountId(1),
            mode: MarginMode::Portfolio,
        },
        Op::ExpireInstrument {
            instrument: InstrumentId(0),
        },
        Op::SessionKey {
            account: AccountId(2),
            key: Address([7; 20]),
            expiry_ms: 10,
            at_ms: 1,
        },
        Op::Deposit {
            account: AccountId(3),
            amount: Amount(5),
        },
    ];
    let bytes = encode(&meta(), &ops).expect("encodes");
    let (_, decoded) = decode(&bytes).expect("decodes");
    assert_eq!(
        decoded,
        [
            ops[3].clone(),
            ops[2].clone(),
            ops[0].clone(),
            ops[1].clone()
        ]
    );
    // Deposit 2 words, session key 2, then the mode's word.
    let at = HEADER_BYTES + 32 * 4;
    let word = &bytes[at..at + 32];
    assert_eq!(u64::from(word[31]), kind::MARGIN_MODE);
    assert_eq!(word[31 - bits::A / 8], 1, "the account");
    assert_eq!(word[31 - bits::SMALL / 8], 2, "Portfolio's code");
    let mut bad = bytes.clone();
    bad[at + 31 - bits::SMALL / 8] = 3;
    assert!(matches!(
        decode(&bad),
        Err(BlobError::Invalid { what: "margin mode", offset }) if offset == at
    ));
}
