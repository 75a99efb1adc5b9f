//! Which data-plane versions this control plane serves (Kong's rule in
//! `kong/clustering/compat`): the same major version, and a minor version no newer than the
//! control plane's. Patch levels, pre-release tags and build metadata are ignored.

/// A `MAJOR.MINOR[.PATCH][-pre][+build]` version, reduced to what the rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    major: u64,
    minor: u64,
}

/// Checks that a data plane of version `dp` may be served by a control plane of version
/// `cp`. The error is the reason sent to the data plane and shown in the registry, e.g.
/// `data plane version 1.0.0 is incompatible with control plane 0.1.0: major versions differ`.
pub(crate) fn check(dp: &str, cp: &str) -> Result<(), String> {
    let incompatible = |why: &str| {
        format!("data plane version {dp} is incompatible with control plane {cp}: {why}")
    };
    let Some(dp_version) = Version::parse(dp) else {
        return Err(if dp.trim().is_empty() {
            "data plane did not send its version".to_owned()
        } else {
            incompatible("the data plane version is not MAJOR.MINOR.PATCH")
        });
    };
    // The control plane's own version comes from Cargo and always parses; if it ever did not,
    // refusing every data plane would be worse than skipping the check.
    let Some(cp_version) = Version::parse(cp) else {
        return Ok(());
    };
    if dp_version.major != cp_version.major {
        return Err(incompatible("major versions differ"));
    }
    if dp_version.minor > cp_version.minor {
        return Err(incompatible(&format!(
            "the data plane's minor version {} is newer than the control plane's {} \
             (upgrade control planes first)",
            dp_version.minor, cp_version.minor
        )));
    }
    Ok(())
}

// === impl Version ===

impl Version {
    fn parse(text: &str) -> Option<Self> {
        let core = text.trim().split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        if let Some(patch) = parts.next() {
            patch.parse::<u64>().ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Self { major, minor })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn same_major_and_older_or_equal_minor_are_served() {
        assert_eq!(check("0.1.0", "0.1.0"), Ok(()));
        assert_eq!(check("0.1.7", "0.1.0"), Ok(()), "patch is ignored");
        assert_eq!(check("1.0.0", "1.3.2"), Ok(()), "older minor");
        assert_eq!(check("1.2.0-rc.1", "1.2.0"), Ok(()), "pre-release");
        assert_eq!(check("1.2.0+build.5", "1.2.0"), Ok(()), "build metadata");
        assert_eq!(check("1.2", "1.2.0"), Ok(()), "no patch");
    }

    #[test]
    fn other_major_is_refused() {
        assert_eq!(
            check("1.0.0", "0.1.0"),
            Err(
                "data plane version 1.0.0 is incompatible with control plane 0.1.0: major \
                 versions differ"
                    .to_owned()
            )
        );
        assert!(check("0.9.0", "1.0.0").is_err(), "older major");
    }

    #[test]
    fn newer_minor_is_refused() {
        let reason = check("0.2.0", "0.1.5").unwrap_err();
        assert!(
            reason.contains("minor version 2 is newer than the control plane's 1"),
            "{reason}"
        );
    }

    #[test]
    fn unparsable_versions() {
        assert_eq!(
            check("", "0.1.0"),
            Err("data plane did not send its version".to_owned())
        );
        for bad in ["x", "1", "1.x.0", "1.2.3.4", "1.2.x"] {
            let reason = check(bad, "0.1.0").unwrap_err();
            assert!(reason.contains("not MAJOR.MINOR.PATCH"), "{bad}: {reason}");
        }
        assert_eq!(check("0.1.0", "garbage"), Ok(()));
    }
}
