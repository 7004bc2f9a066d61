//! Pricing checked against QuantLib's vectors, and implied-volatility round trips.

mod vectors;
