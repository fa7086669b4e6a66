//! Client-facing protocol shapes: parsing what clients send as far as routing needs, and the
//! error objects of each protocol. Pure functions, no IO.

pub mod anthropic;
pub mod json;
pub mod openai;
pub mod translate;
