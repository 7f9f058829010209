//! A toy geography: places are points (longitude, latitude) around a city centre, distances
//! are metres on a flat-earth approximation (good enough over a few kilometres).
//!
//! Restaurants and customers get a fixed place derived from their id, so every function and
//! the simulator agree on them without a lookup service. The whole demo city is one region.

use serde::{Deserialize, Serialize};

/// The only region of the demo city; matchers are keyed by region.
pub const DEMO_REGION: &str = "city";

/// The city centre (Berlin Mitte).
const CENTRE: Location = Location {
    long: 13.4050,
    lat: 52.5200,
};
/// Places lie within this many metres of the centre, along each axis.
const CITY_HALF_SIZE_M: f64 = 2_000.0;
const METRES_PER_DEGREE_LAT: f64 = 111_320.0;

/// A point on the map, as the drivers' apps send it (`{"long":..,"lat":..}`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub long: f64,
    pub lat: f64,
}

impl Location {
    /// Metres between two points.
    pub fn distance_m(&self, other: &Location) -> f64 {
        let (dx, dy) = self.offset_m(other);
        dx.hypot(dy)
    }

    /// The point `metres` further toward `target`, or `target` itself when it is closer.
    pub fn step_toward(&self, target: &Location, metres: f64) -> Location {
        let d = self.distance_m(target);
        if d <= metres || d == 0.0 {
            return *target;
        }
        let f = metres / d;
        Location {
            long: self.long + (target.long - self.long) * f,
            lat: self.lat + (target.lat - self.lat) * f,
        }
    }

    /// East and north metres from `self` to `other`.
    fn offset_m(&self, other: &Location) -> (f64, f64) {
        let per_degree_long = METRES_PER_DEGREE_LAT * self.lat.to_radians().cos();
        (
            (other.long - self.long) * per_degree_long,
            (other.lat - self.lat) * METRES_PER_DEGREE_LAT,
        )
    }
}

/// The fixed place of a restaurant.
pub fn restaurant_location(restaurant_id: &str) -> Location {
    place("restaurant", restaurant_id)
}

/// Where an order is delivered (the order format carries no address; the demo derives one).
pub fn customer_location(order_id: &str) -> Location {
    place("customer", order_id)
}

/// Where a driver starts the day.
pub fn driver_home(driver_id: &str) -> Location {
    place("driver", driver_id)
}

/// The region of a place (one for the whole demo city).
pub fn region_of(_location: &Location) -> String {
    DEMO_REGION.to_owned()
}

/// A point in the city chosen by a stable hash of `kind` and `id` (FNV-1a: the same on every
/// machine and build, unlike std's hasher).
fn place(kind: &str, id: &str) -> Location {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain([0]).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let unit = |bits: u64| (bits & 0xffff) as f64 / 65_535.0 * 2.0 - 1.0;
    let (east, north) = (unit(h) * CITY_HALF_SIZE_M, unit(h >> 16) * CITY_HALF_SIZE_M);
    let per_degree_long = METRES_PER_DEGREE_LAT * CENTRE.lat.to_radians().cos();
    Location {
        long: CENTRE.long + east / per_degree_long,
        lat: CENTRE.lat + north / METRES_PER_DEGREE_LAT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_stable_and_inside_the_city() {
        let a = restaurant_location("r1");
        assert_eq!(a, restaurant_location("r1"));
        assert_ne!(a, customer_location("r1"));
        for id in ["r1", "r2", "o-17", "driver-3"] {
            let d = CENTRE.distance_m(&customer_location(id));
            assert!(d <= CITY_HALF_SIZE_M * 1.5, "{id}: {d} m from the centre");
        }
    }

    #[test]
    fn steps_approach_and_then_reach_the_target() {
        let (from, to) = (restaurant_location("r1"), customer_location("o1"));
        let d = from.distance_m(&to);
        let mid = from.step_toward(&to, d / 2.0);
        assert!((mid.distance_m(&to) - d / 2.0).abs() < 1.0);
        assert_eq!(mid.step_toward(&to, d), to);
    }
}
