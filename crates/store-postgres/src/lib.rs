//! carelayer-store-postgres (in progress)
