//! The address plan: where a node sits on the internal network when it does not set `ip`.

/// Host offset in the subnet for the `index`th node of a planned role (fw1 .1, lb1 .11, web1 .21,
/// db1 .41, mail1 .51, acc1 .61, monitor1 .71). `None` for roles outside the plan.
pub fn planned_offset(role: &str, index: u32) -> Option<u32> {
    let (base, room) = match role {
        "fw" => (0, 9),
        "lb" => (10, 9),
        "web" => (20, 19),
        "db" => (40, 9),
        "mail" => (50, 9),
        "acc" => (60, 9),
        "monitor" => (70, 9),
        _ => return None,
    };
    (1..=room).contains(&index).then_some(base + index)
}

/// Whether the plan places `node` of `role` (else it takes a free address from
/// [`OTHER_ROLES_FROM`], which depends on the other nodes).
pub fn in_address_plan(node: &str, role: &str) -> bool {
    node_index(node).is_some_and(|index| planned_offset(role, index).is_some())
}

/// Where roles outside the plan start.
pub const OTHER_ROLES_FROM: u32 = 100;

/// The number a node name ends with: web2 -> 2.
pub fn node_index(node: &str) -> Option<u32> {
    let digits = node.len() - node.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    node[node.len() - digits..].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_the_design() {
        assert_eq!(planned_offset("fw", 1), Some(1));
        assert_eq!(planned_offset("lb", 1), Some(11));
        assert_eq!(planned_offset("web", 2), Some(22));
        assert_eq!(planned_offset("db", 1), Some(41));
        assert_eq!(planned_offset("mail", 1), Some(51));
        assert_eq!(planned_offset("acc", 1), Some(61));
        assert_eq!(planned_offset("monitor", 1), Some(71));
        assert_eq!(planned_offset("web", 20), None);
        assert_eq!(planned_offset("sleeper", 1), None);
    }

    #[test]
    fn node_index_is_the_trailing_number() {
        assert_eq!(node_index("web12"), Some(12));
        assert_eq!(node_index("acc"), None);
    }
}
