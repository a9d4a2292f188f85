//! carelayer-store-sqlite (in progress)
