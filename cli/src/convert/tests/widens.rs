use super::super::*;

#[test]
fn what_may_admit_more_than_istio_is_flagged_widens_and_warned_about() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reads, namespace: foo}
spec:
  targetRefs: [{kind: Service, name: httpbin}]
  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-deletes, namespace: foo}
spec:
  targetRefs: [{kind: Service, name: httpbin}]
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]
"#;
    let conversion = convert(input, &Options::default()).unwrap();
    let severities: Vec<(String, Severity)> = conversion
        .findings
        .iter()
        .map(|f| (f.object.name.clone().unwrap_or_default(), f.severity))
        .collect();
    // An ALLOW on a Service can admit pod-addressed traffic Istio refused; a DENY there only
    // denies more.
    assert_eq!(
        severities,
        [
            ("reads".to_owned(), Severity::Widens),
            ("no-deletes".to_owned(), Severity::Changed)
        ]
    );
    let table = report_table(&conversion);
    assert!(
        table.contains("WARNING: 1 converted object(s) may admit traffic Istio refused"),
        "{table}"
    );
    let json = serde_json::to_string(&conversion.findings).unwrap();
    assert!(json.contains(r#""severity":"widens""#), "{json}");
}
