//! `rollout_spec`: the rollout spec parser behind `POST /v1/rollouts`, in
//! JSON and YAML.

use canary_analyzer::rollout::spec::{MAX_STEPS, RolloutSpec, SpecFormat, Step};

/// Never panics. The first byte picks the format (even: JSON, odd: YAML),
/// the rest is the body. An accepted spec has at most `MAX_STEPS` steps,
/// weights within 0..=10000 bp, and serializes (it is persisted as JSON);
/// a refused one says why.
pub fn check_rollout_spec(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let format = if selector % 2 == 0 { SpecFormat::Json } else { SpecFormat::Yaml };
    check_result(RolloutSpec::parse(body, format));
    if let Ok(text) = std::str::from_utf8(body) {
        let path = if selector % 2 == 0 { "spec.json" } else { "spec.yaml" };
        check_result(RolloutSpec::parse_file_text(path, text));
        let _ = SpecFormat::from_content_type(Some(text));
    }
}

fn check_result(result: Result<RolloutSpec, canary_analyzer::rollout::spec::SpecError>) {
    match result {
        Ok(spec) => {
            // Resolution may synthesize steps (blue-green adds pre-checks and
            // a switch) beyond the ones written, but never unboundedly.
            assert!(spec.steps.len() <= 2 * MAX_STEPS + 2, "{} steps accepted", spec.steps.len());
            for step in &spec.steps {
                if let Step::SetWeight { weight_bp } = step {
                    assert!(*weight_bp <= 10_000, "weight {weight_bp} bp accepted");
                }
            }
            let persisted =
                serde_json::to_vec(&spec).unwrap_or_else(|error| panic!("spec does not serialize: {error}"));
            let reread: RolloutSpec = serde_json::from_slice(&persisted)
                .unwrap_or_else(|error| panic!("persisted spec does not read: {error}"));
            assert_eq!(reread.steps, spec.steps, "persisted steps differ");
        }
        Err(error) => assert!(!error.message.is_empty(), "an empty error message"),
    }
}
