//! carelayer-records (in progress)
