//! Prints the `ChannelScaler` CRD as YAML.
fn main() {
    print!("{}", osmosis_autoscaler::crd::crd_yaml());
}
