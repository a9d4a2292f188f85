//! carelayer-http (in progress)
