use super::*;

fn good() -> pb::Ad {
    pb::Ad {
        id: "ad-good".into(),
        spec: Some(pb::AdSpec {
            title: "Slay dragons in Eldoria".into(),
            description:
                "Build your guild. Fight epic bosses with friends. Collect rare armor and rule the realm."
                    .into(),
            game_family: "RPG-Fantasy".into(),
            genre: "rpg".into(),
            target_audience: vec!["core".into(), "fantasy-fans".into()],
            visual_elements: vec!["dragon".into(), "castle".into()],
            call_to_action: "Play free now".into(),
            duration_seconds: 15,
            priority: 3,
            max_wait_seconds: 0,
        }),
        ..Default::default()
    }
}

fn names(r: &pb::AnalysisResult) -> Vec<(&str, u32)> {
    r.components.iter().map(|c| (c.name.as_str(), c.score)).collect()
}

#[test]
fn a_well_made_ad_is_approved_with_reasons() {
    let r = Analyzer::new(AnalysisConfig::default()).analyze(&good(), None, "w1", 5);
    assert_eq!(r.verdict, pb::Verdict::Approved as i32, "{:?}", names(&r));
    assert!(r.score >= 65, "{}", r.score);
    let cta = r.components.iter().find(|c| c.name == "call_to_action").unwrap();
    assert_eq!(cta.score, 100);
    assert!(cta.reasons.iter().any(|x| x.contains("\"play\"")), "{:?}", cta.reasons);
    assert!(r.components.iter().all(|c| !c.reasons.is_empty()));
    assert_eq!((r.worker_id.as_str(), r.analyzed_at_ms, r.analyzer_version.as_str()), ("w1", 5, VERSION));
}

#[test]
fn the_same_input_gives_the_same_result() {
    let a = Analyzer::new(AnalysisConfig::default()).analyze(&good(), None, "w", 1);
    let b = Analyzer::new(AnalysisConfig::default()).analyze(&good(), None, "w", 1);
    assert_eq!(a, b);
}

#[test]
fn banned_claims_reject_the_ad_and_name_the_field() {
    let mut ad = good();
    ad.spec.as_mut().unwrap().call_to_action = "Guaranteed win, play now".into();
    let r = Analyzer::new(AnalysisConfig::default()).analyze(&ad, None, "w", 1);
    assert_eq!(r.verdict, pb::Verdict::Rejected as i32);
    assert_eq!(
        r.flags,
        vec![pb::PolicyFlag { term: "guaranteed win".into(), field: "call_to_action".into() }]
    );
}

#[test]
fn a_near_duplicate_of_a_recent_ad_is_flagged_for_review() {
    let mut an = Analyzer::new(AnalysisConfig::default());
    an.analyze(&good(), None, "w", 1);
    let mut copy = good();
    copy.id = "ad-copy".into();
    let r = an.analyze(&copy, None, "w", 2);
    assert_eq!(r.near_duplicate_of, "ad-good");
    assert!(r.similarity >= 0.8);
    assert_eq!(r.verdict, pb::Verdict::NeedsReview as i32);
}

#[test]
fn performance_counts_only_when_there_are_events() {
    let mut an = Analyzer::new(AnalysisConfig::default());
    let none = an.analyze(&good(), Some(&pb::AdPerformance::default()), "w", 1);
    assert!(none.components.iter().all(|c| c.name != "performance"));
    let perf =
        pb::AdPerformance { impressions: 1000, clicks: 20, conversions: 2, ctr: 0.02, conversion_rate: 0.1 };
    let mut other = good();
    other.id = "ad-2".into();
    other.spec.as_mut().unwrap().title = "Another title entirely different".into();
    other.spec.as_mut().unwrap().description =
        "Completely other words are here to avoid duplicates of anything".into();
    let r = an.analyze(&other, Some(&perf), "w", 1);
    let p = r.components.iter().find(|c| c.name == "performance").unwrap();
    assert_eq!(p.score, 100);
    let w: f64 = r.components.iter().map(|c| c.weight).sum();
    assert!((w - 1.0).abs() < 1e-9);
}

#[test]
fn a_weak_ad_scores_low_with_the_reasons_why() {
    let ad = pb::Ad {
        id: "weak".into(),
        spec: Some(pb::AdSpec {
            title: "BUY!!".into(),
            game_family: "Misc".into(),
            priority: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = Analyzer::new(AnalysisConfig::default()).analyze(&ad, None, "w", 1);
    assert_eq!(r.verdict, pb::Verdict::Rejected as i32, "{:?} {}", names(&r), r.score);
    let t = r.components.iter().find(|c| c.name == "title").unwrap();
    assert!(t.reasons.iter().any(|x| x.contains("repeated punctuation")), "{:?}", t.reasons);
}
